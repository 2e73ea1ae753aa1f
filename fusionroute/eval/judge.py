"""Pairwise LLM-as-judge win rates (the paper's Figures 3 and 4).

Protocol (shared by every backend):
- The prompt is the paper's GPT-4o evaluation prompt (Appendix C.1.2, `data/judge_prompt.txt`,
  provenance in `data/judge_prompt.SOURCE.md`) with `{question}`, `{answer1}`, `{answer2}`.
- A backend (`Judge`) answers a `JudgeRequest` with text whose FIRST line holds two scores,
  "s1 s2" for Assistant 1 and Assistant 2 (see `parse_scores` for what else is accepted).
- Every item is judged in both orders: A as Assistant 1 ("ab"), then B as Assistant 1 ("ba").
- Order-combination rule: margin = (a_ab - b_ab) + (a_ba - b_ba), i.e. A's summed score over
  both orders minus B's. margin > 0 -> win for A, < 0 -> loss, == 0 (|margin| < 1e-9) -> tie.
  A pure position bias (the same "7 6" in both orders) therefore cancels to a tie.
- Malformed answers (first line not parseable, or a score outside [1, 10]) are re-asked up to
  `malformed_retries` times; if an order is still malformed the item's verdict is "malformed"
  (the other order is then not asked). Malformed items are EXCLUDED from N and reported
  (`malformed`, `malformed_ids`, and `win_rate_malformed_as_ties` as a sensitivity figure).
- win_rate = (wins + ties / 2) / N with N = wins + ties + losses (paper, Section 5.2).
- HTTP failures (timeouts, connection errors, 429, 5xx) are retried with bounded exponential
  backoff; when the retries run out the run stops with `JudgeHTTPError`. Finished items are kept
  in a `ResumableJsonl` cache keyed by item id and a hash of the judge settings (plus a per-item
  content hash), so a rerun only asks what is missing.

Backends: `OpenAIJudge` (any OpenAI-compatible chat-completions endpoint through the `openai`
client) and `VerifierJudge` (offline, tiny world: scores each answer with the benchmark scorers
of `fusionroute.eval.scoring` against the item's `reference`).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Protocol

from fusionroute.io import ResumableJsonl, iter_jsonl, settings_hash, write_json

SCORE_LOW = 1.0
SCORE_HIGH = 10.0
ORDERS = ("ab", "ba")  # "ab": A is Assistant 1; "ba": B is Assistant 1
COMBINE_RULE = "sum_of_score_differences_over_both_orders"


class JudgeError(RuntimeError):
    """A judge could not produce an answer (not a malformed answer: those are counted)."""


class JudgeHTTPError(JudgeError):
    """The endpoint kept failing (timeouts / 5xx / 429) after the bounded retries."""


# --------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------

def load_judge_prompt() -> str:
    """The paper's evaluation prompt template (trailing newline stripped)."""
    text = resources.files("fusionroute.eval").joinpath("data/judge_prompt.txt").read_text("utf-8")
    return text.rstrip("\n")


def render_prompt(question: str, answer1: str, answer2: str, template: str | None = None) -> str:
    """Fill the template. `str.format` parses only the template, so braces inside the question or
    answers (code!) are inserted literally."""
    template = load_judge_prompt() if template is None else template
    return template.format(question=question, answer1=answer1, answer2=answer2)


# --------------------------------------------------------------------------------------------
# Parsing the verdict
# --------------------------------------------------------------------------------------------

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
# Strict form, what the prompt asks for: "7.5 6.25". ", " and ";" also separate; a comma with no
# space after it ("8,6") does not, since it may be a decimal comma.
_PLAIN = re.compile(rf"({_NUM})\s*(?:,\s+|;\s*|\s+)({_NUM})")
# Labelled form: "Assistant 1: 7.5, Assistant 2: 6" (either label order, each label once,
# optionally "/10" after a score, optionally "Scores:" before). Anything else on the line makes it
# ambiguous and it is rejected.
_LABEL = r"(?:assistant|a)\s*([12])\s*(?:'s\s*score)?\s*[:=\-]?\s*"
_LABELLED = re.compile(
    rf"(?:scores?\s*:?\s*)?{_LABEL}({_NUM})\s*(?:/\s*10)?\s*(?:[,;]|\band\b)?\s*"
    rf"{_LABEL}({_NUM})\s*(?:/\s*10)?",
    re.IGNORECASE,
)


def parse_scores(text: str | None, low: float = SCORE_LOW, high: float = SCORE_HIGH
                 ) -> tuple[float, float] | None:
    """Two scores (Assistant 1, Assistant 2) from the first line of a judge answer, or None.

    The first line is the first non-blank line. Surrounding markdown emphasis/code marks (`*`, `` ` ``,
    `_`, `#`) and one trailing period are ignored. Accepted:
      - exactly two numbers separated by whitespace, ", " or ";"     ("7.5 6.25", "8, 6"; not
        "8,6", which may be a decimal comma)
      - "Assistant 1: X ... Assistant 2: Y" with both labels present exactly once and nothing else
        on the line (also "Assistant 2: Y, Assistant 1: X", "A1=8 A2=6", "Assistant 1: 8/10 ...")
    Rejected (None): anything else on the line (e.g. "8 6 because ..."), three or more numbers, a
    score outside [low, high], NaN. Equal scores are accepted (the prompt forbids them, but they are
    unambiguous; they contribute 0 to the margin).
    """
    if not text:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    first = lines[0].strip().strip("*`_#").strip()
    if first.endswith("."):
        first = first[:-1].rstrip()
    pair: tuple[float, float] | None = None
    match = _PLAIN.fullmatch(first)
    if match:
        pair = (float(match.group(1)), float(match.group(2)))
    else:
        match = _LABELLED.fullmatch(first)
        if match and {match.group(1), match.group(3)} == {"1", "2"}:
            by_label = {match.group(1): float(match.group(2)), match.group(3): float(match.group(4))}
            pair = (by_label["1"], by_label["2"])
    if pair is None:
        return None
    if not all(math.isfinite(s) and low <= s <= high for s in pair):
        return None
    return pair


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeRequest:
    """One question to a judge: the rendered prompt plus its parts (offline judges use those)."""
    prompt: str                      # the paper's prompt, filled in this order
    question: str
    answer1: str                     # the answer shown as Assistant 1
    answer2: str                     # the answer shown as Assistant 2
    reference: dict | None = None    # optional ground truth, e.g. {"benchmark", "record"}
    attempt: int = 0                 # 0 for the first ask, k for the k-th malformed retry


class Judge(Protocol):
    def respond(self, request: JudgeRequest) -> str:
        """The judge's raw answer text; first line "s1 s2"."""

    def settings(self) -> dict:
        """Everything that changes verdicts (goes into the cache/settings hash; no secrets)."""


class OpenAIJudge:
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-compatible proxies, vLLM,
    llama.cpp server ...) through the `openai` client.

    model/base_url/api key come from the arguments, else from the environment variables named by
    `model_env` / `base_url_env` / `api_key_env` (defaults JUDGE_MODEL, OPENAI_BASE_URL,
    OPENAI_API_KEY), else model "gpt-4o" and the official endpoint. The client's own retries are
    switched off; this class retries timeouts, connection errors, 429 and 5xx itself,
    `http_retries` times with backoff min(backoff_s * 2**k, max_backoff_s).
    """

    def __init__(self, model: str | None = None, *, base_url: str | None = None,
                 api_key: str | None = None, model_env: str = "JUDGE_MODEL",
                 base_url_env: str = "OPENAI_BASE_URL", api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int | None = 512, timeout_s: float = 60.0,
                 http_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 system_prompt: str | None = None, seed: int | None = None):
        import openai  # local import: the offline judge must not need it

        self._openai = openai
        self.model = model or os.environ.get(model_env) or "gpt-4o"
        self.base_url = base_url or os.environ.get(base_url_env) or None
        key = api_key or os.environ.get(api_key_env)
        if not key:
            if self.base_url is None:
                raise JudgeError(f"no API key: set ${api_key_env} or pass api_key")
            key = "EMPTY"  # local OpenAI-compatible servers usually ignore the key
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.timeout_s = float(timeout_s)
        self.http_retries = int(http_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.system_prompt = system_prompt
        self.seed = seed
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout_s,
                                    max_retries=0)
        self.http_attempts = 0  # total requests sent (diagnostics)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: dict) -> "OpenAIJudge":
        keys = ("model", "base_url", "api_key", "model_env", "base_url_env", "api_key_env",
                "temperature", "max_tokens", "timeout_s", "http_retries", "backoff_s",
                "max_backoff_s", "system_prompt", "seed")
        unknown = set(cfg) - set(keys) - {"backend"}
        if unknown:
            raise ValueError(f"unknown OpenAIJudge config keys: {sorted(unknown)}")
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    def settings(self) -> dict:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url,
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                "system_prompt": self.system_prompt, "seed": self.seed}

    def _retryable(self, exc: BaseException) -> bool:
        o = self._openai
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError,
                            o.InternalServerError)):
            return True
        return isinstance(exc, o.APIStatusError) and exc.status_code >= 500

    def respond(self, request: JudgeRequest) -> str:
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages,
                                  "temperature": self.temperature}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.seed is not None:
            kwargs["seed"] = self.seed
        last: BaseException | None = None
        for attempt in range(self.http_retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            with self._lock:
                self.http_attempts += 1
            try:
                response = self.client.chat.completions.create(**kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below
                if not self._retryable(exc):
                    raise JudgeError(f"judge request failed: {exc!r}") from exc
                last = exc
                continue
            if not response.choices:
                return ""
            return response.choices[0].message.content or ""
        raise JudgeHTTPError(f"judge endpoint failed {self.http_retries + 1} times; last: {last!r}") \
            from last


def _instruction_fraction(sample: dict) -> float | None:
    """Fraction of IFEval instructions followed (strict), from the scorer's sample record.

    `fusionroute.eval.scoring` writes, per IFEval sample, `instructions` (the record's instruction
    ids, one per instruction) and `failed_instructions` (those not followed in strict mode, one
    entry per failed instruction). None for a record without them (the other benchmarks)."""
    instructions = sample.get("instructions")
    failed = sample.get("failed_instructions")
    if not isinstance(instructions, (list, tuple)) or not instructions or not isinstance(failed, (list, tuple)):
        return None
    if len(failed) > len(instructions):
        raise ValueError(f"sample {sample.get('id')!r}: {len(failed)} failed of {len(instructions)} instructions")
    return (len(instructions) - len(failed)) / len(instructions)


def _quantize(score: float) -> float:
    """Round to the prompt's 0.25 grid inside [1, 10]."""
    return min(SCORE_HIGH, max(SCORE_LOW, round(score * 4) / 4))


class VerifierJudge:
    """Offline judge for the tiny world: each answer is scored against the item's ground truth
    with the real benchmark scorers, and the verdict is returned as text ("s1 s2\\nexplanation")
    so it goes through the same parser as an LLM judge.

    Score of one answer: 10 if the scorer marks it correct, else 1; with `partial_credit`, an
    incorrect IFEval answer (a sample record with `instructions` and `failed_instructions`) gets
    1 + 9 * fraction of its instructions followed in strict mode (quantized to 0.25).
    Items need `reference = {"benchmark": name, "record": {...}}`.
    `score_fn(benchmark, generations, records) -> {"samples": [...]}` defaults to
    `fusionroute.eval.scoring.score_benchmark`. Results per (benchmark, record, answer) are cached,
    so each answer runs once although both orders are asked.
    """

    requires_reference = True

    def __init__(self, score_fn: Callable[..., dict] | None = None, *, partial_credit: bool = True):
        if score_fn is None:
            from fusionroute.eval.scoring import score_benchmark
            score_fn = score_benchmark
        self.score_fn = score_fn
        self.partial_credit = partial_credit
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def settings(self) -> dict:
        settings = {"backend": "verifier", "partial_credit": self.partial_credit,
                    "score_fn": getattr(self.score_fn, "__module__", "?") + "."
                    + getattr(self.score_fn, "__qualname__", "?")}
        if self.partial_credit:
            # Part of the settings hash, so per-item rows cached before partial credit read the
            # scorer's real fields (when it never applied) are judged again, not reused.
            settings["partial_credit_fields"] = ["instructions", "failed_instructions"]
        return settings

    def score_answer(self, answer: str, reference: dict) -> tuple[float, str]:
        """(score in [1, 10], short reason) for one answer."""
        benchmark, record = reference["benchmark"], reference["record"]
        key = hashlib.sha256(json.dumps([benchmark, record, answer], sort_keys=True,
                                        default=str).encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        rid = str(record.get("id", "0"))
        result = self.score_fn(benchmark, generations=[{"id": rid, "completion": answer}],
                               records=[record])
        sample = result["samples"][0]
        fraction = _instruction_fraction(sample) if self.partial_credit else None
        if sample.get("correct"):
            score, reason = SCORE_HIGH, "correct"
        elif fraction is not None:
            score = _quantize(SCORE_LOW + (SCORE_HIGH - SCORE_LOW) * fraction)
            reason = f"{fraction:.2f} of instructions followed"
        else:
            score, reason = SCORE_LOW, "incorrect"
        with self._lock:
            self._cache[key] = (score, reason)
        return score, reason

    def respond(self, request: JudgeRequest) -> str:
        if not request.reference:
            raise JudgeError("VerifierJudge needs a `reference` for every item")
        s1, r1 = self.score_answer(request.answer1, request.reference)
        s2, r2 = self.score_answer(request.answer2, request.reference)
        return f"{s1:g} {s2:g}\nAssistant 1: {r1}; Assistant 2: {r2} " \
               f"({request.reference['benchmark']} scorer)."


def make_judge(cfg: dict) -> Judge:
    """Build a judge from a config dict: {"backend": "openai", ...OpenAIJudge kwargs} or
    {"backend": "verifier", "partial_credit": bool}."""
    backend = cfg.get("backend", "openai")
    if backend == "openai":
        return OpenAIJudge.from_config(cfg)
    if backend == "verifier":
        return VerifierJudge(partial_credit=cfg.get("partial_credit", True))
    raise ValueError(f"unknown judge backend {backend!r}")


# --------------------------------------------------------------------------------------------
# Pairwise evaluation
# --------------------------------------------------------------------------------------------

def _item_hash(item: dict) -> str:
    return settings_hash({k: item.get(k) for k in ("question", "answer_a", "answer_b", "reference")})


def _ask(judge: Judge, template: str, item: dict, order: str, malformed_retries: int) -> dict:
    """One order of one item, with malformed retries. Returns the order's record."""
    if order == "ab":
        a1, a2 = item["answer_a"], item["answer_b"]
    else:
        a1, a2 = item["answer_b"], item["answer_a"]
    prompt = render_prompt(item["question"], a1, a2, template)
    raws = []
    for attempt in range(malformed_retries + 1):
        raw = judge.respond(JudgeRequest(prompt=prompt, question=item["question"], answer1=a1,
                                         answer2=a2, reference=item.get("reference"),
                                         attempt=attempt))
        raws.append(raw)
        scores = parse_scores(raw)
        if scores is not None:
            s1, s2 = scores
            a, b = (s1, s2) if order == "ab" else (s2, s1)
            return {"order": order, "scores": [s1, s2], "score_a": a, "score_b": b,
                    "attempts": attempt + 1, "raw": raws}
    return {"order": order, "scores": None, "score_a": None, "score_b": None,
            "attempts": len(raws), "raw": raws}


def judge_item(judge: Judge, item: dict, *, template: str | None = None,
               malformed_retries: int = 2) -> dict:
    """Both orders of one item combined into a verdict (see the module docstring)."""
    template = load_judge_prompt() if template is None else template
    orders = []
    for order in ORDERS:
        rec = _ask(judge, template, item, order, malformed_retries)
        orders.append(rec)
        if rec["scores"] is None:
            break  # the item is malformed whatever the other order says
    row: dict[str, Any] = {"id": str(item["id"]), "item_hash": _item_hash(item), "orders": orders}
    if any(o["scores"] is None for o in orders):
        row.update(verdict="malformed", margin=None, score_a=None, score_b=None)
        return row
    score_a = sum(o["score_a"] for o in orders)
    score_b = sum(o["score_b"] for o in orders)
    margin = score_a - score_b
    verdict = "tie" if abs(margin) < 1e-9 else ("win" if margin > 0 else "loss")
    # Did each order on its own prefer the same side? (position-bias diagnostics)
    prefs = [("a" if o["score_a"] > o["score_b"] else "b" if o["score_a"] < o["score_b"] else "=")
             for o in orders]
    row.update(verdict=verdict, margin=margin, score_a=score_a, score_b=score_b,
               order_preferences=prefs, consistent=prefs[0] == prefs[1])
    return row


def summarize(rows: list[dict]) -> dict:
    """Counts and win rate from per-item rows (malformed rows excluded from N)."""
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("win", "tie", "loss", "malformed")}
    n = counts["win"] + counts["tie"] + counts["loss"]
    win_rate = (counts["win"] + counts["tie"] / 2) / n if n else None
    ci95 = None
    if n:
        values = [1.0 if r["verdict"] == "win" else 0.5 if r["verdict"] == "tie" else 0.0
                  for r in rows if r["verdict"] != "malformed"]
        var = sum((v - win_rate) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        half = 1.96 * math.sqrt(var / n)
        ci95 = [max(0.0, win_rate - half), min(1.0, win_rate + half)]
    total = n + counts["malformed"]
    valid = [r for r in rows if r["verdict"] != "malformed"]
    ab_first = sum(1 for r in valid if r["orders"][0]["scores"][0] > r["orders"][0]["scores"][1])
    ba_first = sum(1 for r in valid if r["orders"][1]["scores"][0] > r["orders"][1]["scores"][1])
    return {
        "win_rate": win_rate,
        "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"], "n": n,
        "malformed": counts["malformed"],
        "malformed_ids": [r["id"] for r in rows if r["verdict"] == "malformed"],
        "n_items": total,
        "win_rate_malformed_as_ties":
            (counts["win"] + (counts["tie"] + counts["malformed"]) / 2) / total if total else None,
        "ci95": ci95,
        # Fraction of (valid) judgements in which Assistant 1 got the higher score: 0.5 = no bias.
        "assistant1_preferred": (ab_first + ba_first) / (2 * n) if n else None,
        "consistent_fraction": (sum(bool(r.get("consistent")) for r in valid) / n) if n else None,
        "retried_malformed": sum(o["attempts"] - 1 for r in rows for o in r["orders"]),
    }


def judge_pairs(judge: Judge, items: list[dict], *, out_path: str | os.PathLike | None = None,
                cache_path: str | os.PathLike | None = None, malformed_retries: int = 2,
                workers: int = 4, template: str | None = None, label: dict | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Judge A vs B for every item: [{"id", "question", "answer_a", "answer_b", "reference"?}].

    Returns (and writes to `out_path` as JSON, atomically) the `summarize` fields plus
    "items" (per-item rows with both orders' raw answers and scores), "settings" and
    "settings_hash". Per-item rows are cached in `cache_path` (default `<out_path>.items.jsonl`;
    none if neither is given; rows go to `<cache_path>.partial` as they finish and the final file
    is written in item order at the end). A rerun with the same settings reuses the rows of both
    files; an item whose question/answers/reference changed is judged again. `label` (e.g. {"a": "fusionroute",
    "b": "finetuned"}) is stored as is. HTTP failures that survive the retries propagate
    (`JudgeHTTPError`) after the finished items are cached.
    """
    template = load_judge_prompt() if template is None else template
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    for item in items:
        missing = {"id", "question", "answer_a", "answer_b"} - set(item)
        if missing:
            raise ValueError(f"item {item.get('id')!r} lacks {sorted(missing)}")
        if getattr(judge, "requires_reference", False) and not item.get("reference"):
            raise ValueError(f"item {item['id']!r} has no reference; {type(judge).__name__} "
                             "needs one")
    settings = {"judge": judge.settings(),
                "prompt_sha256": hashlib.sha256(template.encode()).hexdigest()[:16],
                "malformed_retries": malformed_retries, "combine": COMBINE_RULE,
                "score_range": [SCORE_LOW, SCORE_HIGH]}
    shash = settings_hash(settings)
    if cache_path is None and out_path is not None:
        cache_path = Path(str(out_path) + ".items.jsonl")
    done: dict[str, dict] = {}
    cache = None
    if cache_path is not None:
        # Reusable rows: the finished per-item file of an earlier complete run (rows carry the
        # settings hash, since that file has no header) and the .partial file of a killed run.
        previous: dict[str, dict] = {}
        if Path(cache_path).exists():
            previous = {str(r["id"]): r for r in iter_jsonl(cache_path)
                        if r.get("settings_hash") == shash}
        cache = ResumableJsonl(cache_path, shash)
        previous.update(cache.done)
        hashes = {str(item["id"]): _item_hash(item) for item in items}
        done = {i: row for i, row in previous.items()
                if i in hashes and row.get("item_hash") == hashes[i]}
    todo = [item for item in items if str(item["id"]) not in done]
    finished = len(items) - len(todo)
    failure: BaseException | None = None
    if todo:
        with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(judge_item, judge, item, template=template,
                                   malformed_retries=malformed_retries) for item in todo]
            try:
                for future in cf.as_completed(futures):
                    try:
                        row = future.result()
                    except BaseException as exc:  # keep going to cache what finishes
                        if failure is None:
                            failure = exc
                            for f in futures:
                                f.cancel()
                        continue
                    row["settings_hash"] = shash
                    done[row["id"]] = row
                    if cache is not None:
                        cache.add(row)
                    finished += 1
                    if progress is not None:
                        progress(finished, len(items))
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()
                raise
    if failure is not None:
        if cache is not None:
            cache._handle.close()  # rows so far stay in the .partial file for the rerun
        raise failure
    rows = [done[i] for i in ids]
    if cache is not None:
        # Keep only the current rows, in item order, as the final per-item file.
        cache.done = {i: done[i] for i in ids}
        cache.finish(ids)
    result = summarize(rows)
    result.update(settings=settings, settings_hash=shash, label=label or {}, items=rows)
    if out_path is not None:
        write_json(out_path, result)
    return result


# --------------------------------------------------------------------------------------------
# Items from generation artefacts, CLI
# --------------------------------------------------------------------------------------------

def items_from_generations(gens_a: str | os.PathLike | list[dict],
                           gens_b: str | os.PathLike | list[dict], *,
                           questions: dict[str, str] | None = None,
                           references: dict[str, dict] | None = None,
                           strict: bool = True) -> list[dict]:
    """Pair two generations.jsonl (docs/CONTRACTS.md schema) by id. The question shown to the judge is
    `questions[id]` (the raw instruction) if given, else the generation's templated `prompt`.
    `strict`: the two files must hold the same ids; otherwise only common ids are used."""
    def load(src):
        return list(iter_jsonl(src)) if isinstance(src, (str, os.PathLike)) else list(src)
    rows_a, rows_b = load(gens_a), load(gens_b)
    b_by_id = {str(r["id"]): r for r in rows_b}
    ids_a = [str(r["id"]) for r in rows_a]
    if strict and set(ids_a) != set(b_by_id):
        raise ValueError(f"generation ids differ: {len(set(ids_a) ^ set(b_by_id))} not shared")
    items = []
    for row in rows_a:
        rid = str(row["id"])
        if rid not in b_by_id:
            continue
        item = {"id": rid,
                "question": (questions or {}).get(rid, row.get("prompt", "")),
                "answer_a": row["completion"], "answer_b": b_by_id[rid]["completion"]}
        if references and rid in references:
            item["reference"] = references[rid]
        items.append(item)
    return items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Pairwise judge win rate of A vs B (paper Fig. 3/4).")
    p.add_argument("--a", required=True, help="generations.jsonl of the method under test")
    p.add_argument("--b", required=True, help="generations.jsonl of the comparison model")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--backend", choices=["openai", "verifier"], default="openai")
    p.add_argument("--model", default=None)
    p.add_argument("--base-url", default=None)
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--base-url-env", default="OPENAI_BASE_URL")
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--http-retries", type=int, default=4)
    p.add_argument("--malformed-retries", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--questions", default=None,
                   help="JSON or JSONL with id -> question (else the generation prompt is used)")
    p.add_argument("--references", default=None,
                   help="JSONL rows {id, benchmark, record} for the verifier backend")
    p.add_argument("--label-a", default="a")
    p.add_argument("--label-b", default="b")
    args = p.parse_args(argv)

    questions = None
    if args.questions:
        if args.questions.endswith(".jsonl"):
            questions = {str(r["id"]): r["question"] for r in iter_jsonl(args.questions)}
        else:
            questions = {str(k): v for k, v in json.loads(Path(args.questions).read_text()).items()}
    references = None
    if args.references:
        references = {str(r["id"]): {"benchmark": r["benchmark"], "record": r["record"]}
                      for r in iter_jsonl(args.references)}
    items = items_from_generations(args.a, args.b, questions=questions, references=references)
    if args.backend == "openai":
        judge: Judge = OpenAIJudge(args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                                   base_url_env=args.base_url_env, timeout_s=args.timeout_s,
                                   http_retries=args.http_retries)
    else:
        judge = VerifierJudge()
    result = judge_pairs(judge, items, out_path=args.out, malformed_retries=args.malformed_retries,
                         workers=args.workers, label={"a": args.label_a, "b": args.label_b})
    print(f"win_rate={result['win_rate']} wins={result['wins']} ties={result['ties']} "
          f"losses={result['losses']} n={result['n']} malformed={result['malformed']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
