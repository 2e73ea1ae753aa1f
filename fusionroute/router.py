"""The FusionRoute router: a causal LM plus a linear routing head over its last hidden state.

At every position it gives its own next-token logits (the complementary logits of Eq. 1) and
routing logits `w` over the experts. Saved as one directory: the LM in Hugging Face format
(so `AutoModelForCausalLM` alone can still load it), plus `routing_head.safetensors` and
`router_config.json`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import ModelOutput

ROUTER_CONFIG = "router_config.json"
ROUTING_HEAD = "routing_head.safetensors"


@dataclass
class RouterConfig:
    expert_names: list[str]  # order = index of the routing head's outputs
    hidden_size: int

    @property
    def n_experts(self) -> int:
        return len(self.expert_names)


@dataclass
class RouterOutput(ModelOutput):
    """A ModelOutput (not a bare dataclass) so that DDP/FSDP find the tensors in it."""

    logits: torch.Tensor | None = None  # (batch, seq, vocab): the router's own next-token logits
    routing_logits: torch.Tensor | None = None  # (batch, seq, n_experts): w_t before softmax
    past_key_values: Any = None


class RouterModel(nn.Module):
    def __init__(self, lm: PreTrainedModel, config: RouterConfig):
        super().__init__()
        self.lm = lm
        self.config = config
        self.routing_head = nn.Linear(config.hidden_size, config.n_experts, bias=False)
        self.routing_head.to(device=lm.device, dtype=lm.dtype)

    @classmethod
    def from_lm(cls, lm: PreTrainedModel, expert_names: list[str], seed: int = 0) -> "RouterModel":
        """A fresh router around `lm` (the paper initialises it from the instruction expert)."""
        router = cls(lm, RouterConfig(list(expert_names), lm.config.get_text_config().hidden_size))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weight = torch.empty(router.routing_head.weight.shape, dtype=torch.float32)
            nn.init.normal_(weight, std=0.02, generator=generator)
            router.routing_head.weight.copy_(weight)
        return router

    @classmethod
    def from_pretrained(cls, path: str | Path, **load_kwargs: Any) -> "RouterModel":
        path = Path(path)
        config_file = path / ROUTER_CONFIG
        if not config_file.exists():
            raise FileNotFoundError(f"{path} is not a router directory: {ROUTER_CONFIG} is missing")
        config = RouterConfig(**json.loads(config_file.read_text()))
        lm = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
        router = cls(lm, config)
        state = load_file(str(path / ROUTING_HEAD))
        router.routing_head.load_state_dict({k: v.to(lm.dtype) for k, v in state.items()})
        return router

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """`state_dict`: the router's full weights when they live elsewhere (gathered from shards)."""
        path = Path(path)
        if state_dict is None:
            self.lm.save_pretrained(path)
            head = self.routing_head.state_dict()
        else:
            self.lm.save_pretrained(path, state_dict={k[len("lm."):]: v for k, v in state_dict.items() if k.startswith("lm.")})
            head = {k[len("routing_head."):]: v for k, v in state_dict.items() if k.startswith("routing_head.")}
        save_file({k: v.contiguous() for k, v in head.items()}, str(path / ROUTING_HEAD))
        (path / ROUTER_CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> RouterOutput:
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=True,
            **kwargs,
        )
        hidden = out.hidden_states[-1]  # final-norm output, what the LM head sees
        return RouterOutput(out.logits, self.routing_head(hidden), out.past_key_values if use_cache else None)

    def routing_parameters(self) -> list[nn.Parameter]:
        return list(self.routing_head.parameters())

    def lm_parameters(self) -> list[nn.Parameter]:
        return list(self.lm.parameters())
