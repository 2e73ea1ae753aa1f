"""Pairwise judge: parsing, both orders, malformed/HTTP retries, resume, offline verifier.

The OpenAI backend is tested against a real chat-completions HTTP server on 127.0.0.1 whose
answers are chosen by inspecting each request (question and which answer is Assistant 1).
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chat_server import ChatServer
from fusionroute.eval import judge as J
from fusionroute.io import read_json, read_jsonl

# The paper's text is not part of this repository (its licence is the authors'): give its path in
# FUSIONROUTE_PAPER_TEXT to check the prompt against it; without it the comparison is skipped.
REFERENCE = Path(os.environ.get("FUSIONROUTE_PAPER_TEXT", "paper-text-not-given"))

PAPER_SENTENCES = [
    "You are a precise assistant for checking the quality of the answer.",
    "Each assistant receives an overall float score on a scale of 1 to 10, in increments of 0.25.",
    "Do not give two responses a same score. Do not prefer longer response.",
    "Please first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space.",
    "ensuring that the order in which the responses were presented does not affect your judgment.",
]


# ------------------------------------------------------------------------------------------------
# A real local chat-completions server
# ------------------------------------------------------------------------------------------------

def item(name, **extra):
    return {"id": name, "question": f"Q-{name}?", "answer_a": f"A: answer {name} {{a}}",
            "answer_b": f"B: answer {name}", **extra}


# Per question: what the judge says. Scores are (Assistant 1, Assistant 2).
def default_script(question, order, k, answers=None):
    name = question[2:-1]
    if name == "win":      # A better in both orders
        return ("ok", "8 6\nA is better." if order == "ab" else "5 7.5\nA is better.")
    if name == "loss":
        return ("ok", "Assistant 1: 4, Assistant 2: 9\nB." if order == "ab" else "9.25 3\nB.")
    if name == "tie":      # pure position bias: Assistant 1 always 7, Assistant 2 always 6
        return ("ok", "7 6\nThe first one.")
    if name == "garbage":  # never parseable
        return ("ok", "Both answers are quite good, I would say.")
    if name == "fixme":    # malformed once per order, then fine
        return ("ok", "Here are my scores:\n8 2") if k == 0 else ("ok", "8 2" if order == "ab"
                                                                   else "2 8")
    if name == "err500":   # 500 once per order, then fine
        return ("status", 500) if k == 0 else ("ok", "6 7" if order == "ab" else "7 6.5")
    if name == "slow":     # sleeps past the client timeout once, then fine
        return ("sleep", 1.5, "x") if (k == 0 and order == "ab") else ("ok", "6 5" if order == "ab"
                                                                       else "5 6")
    raise AssertionError(question)


@pytest.fixture
def env(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "JUDGE_MODEL", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def make_judge(server, **kw):
    kw.setdefault("timeout_s", 0.5)
    kw.setdefault("http_retries", 2)
    kw.setdefault("backoff_s", 0.01)
    return J.OpenAIJudge(kw.pop("model", "judge-model"), base_url=server.url, api_key="k", **kw)


# ------------------------------------------------------------------------------------------------
# Prompt and parsing
# ------------------------------------------------------------------------------------------------

def test_prompt_template_is_the_papers():
    template = J.load_judge_prompt()
    assert template.count("{question}") == template.count("{answer1}") == 1
    assert template.count("{answer2}") == 1
    flat = re.sub(r"\s+", " ", template)
    for sentence in PAPER_SENTENCES:
        assert sentence in flat
    assert template.index("{answer1}") < template.index("{answer2}")
    if not REFERENCE.exists():
        pytest.skip("the paper's text is not in this repository: set FUSIONROUTE_PAPER_TEXT to a copy to compare")
    ref = REFERENCE.read_text(encoding="utf-8")
    start = ref.index("Prompt: You are a precise assistant") + len("Prompt: ")
    paper = ref[start:ref.index("C.2 Router")].replace("\u2019", "'")
    ours = (template.replace("{question}", "question").replace("{answer1}", "answer1")
            .replace("{answer2}", "answer2"))
    assert re.sub(r"\s+", " ", ours).strip() == re.sub(r"\s+", " ", paper).strip()


def test_render_prompt_inserts_braces_literally():
    text = J.render_prompt("What is {x}?", "def f(): return {1: 2}", "{answer1} {question}")
    assert "What is {x}?" in text and "def f(): return {1: 2}" in text
    assert "{answer1} {question}" in text
    assert text.index("def f()") < text.index("{answer1} {question}")


@pytest.mark.parametrize("text,expected", [
    ("7.5 6.25\nexplanation", (7.5, 6.25)),
    ("\n  8 6  \nx", (8.0, 6.0)),
    ("**9 2.75**", (9.0, 2.75)),
    ("8, 6.", (8.0, 6.0)),
    ("10 1", (10.0, 1.0)),
    ("7 7", (7.0, 7.0)),
    ("Assistant 1: 7.5, Assistant 2: 6", (7.5, 6.0)),
    ("Assistant 2: 6; Assistant 1: 9", (9.0, 6.0)),
    ("Assistant 1: 8/10 and Assistant 2: 6/10", (8.0, 6.0)),
    ("Scores: Assistant 1 - 7, Assistant 2 - 3", (7.0, 3.0)),
    ("8 6 because the first is better", None),
    ("8 6 7", None),
    ("8,6", None),              # could be a decimal comma
    ("0 5", None), ("11 2", None), ("nan 5", None), ("-3 4", None),
    ("Assistant 1: 8, Assistant 1: 6", None),
    ("The scores are 8 and 6", None),
    ("Here are my scores:\n8 6", None),   # the FIRST line must hold them
    ("", None), (None, None), ("   \n  ", None),
])
def test_parse_scores(text, expected):
    assert J.parse_scores(text) == expected


# ------------------------------------------------------------------------------------------------
# OpenAI backend against a real HTTP server
# ------------------------------------------------------------------------------------------------

def test_judge_pairs_http_end_to_end(env, tmp_path):
    names = ["win", "loss", "tie", "garbage", "fixme", "err500", "slow"]
    items = [item(n) for n in names]
    env.setenv("MY_JUDGE_KEY", "secret-123")
    with ChatServer(default_script) as server:
        env.setenv("MY_JUDGE_URL", server.url)
        env.setenv("JUDGE_MODEL", "judge-from-env")
        judge = J.OpenAIJudge(api_key_env="MY_JUDGE_KEY", base_url_env="MY_JUDGE_URL",
                              timeout_s=0.5, http_retries=2, backoff_s=0.01)
        t0 = time.monotonic()
        out = tmp_path / "judge.json"
        res = J.judge_pairs(judge, items, out_path=out, malformed_retries=2, workers=3,
                            label={"a": "fusionroute", "b": "finetuned"})
        elapsed = time.monotonic() - t0
    assert elapsed < 10
    verdicts = {r["id"]: r["verdict"] for r in res["items"]}
    assert verdicts == {"win": "win", "loss": "loss", "tie": "tie", "garbage": "malformed",
                        "fixme": "win", "err500": "loss", "slow": "win"}
    by_id = {r["id"]: r for r in res["items"]}
    # win: A got 8 (as Assistant 1) and 7.5 (as Assistant 2); B 6 and 5.
    assert by_id["win"]["score_a"] == 15.5 and by_id["win"]["score_b"] == 11.0
    assert by_id["win"]["margin"] == 4.5 and by_id["win"]["consistent"]
    assert by_id["loss"]["score_a"] == 4 + 3 and by_id["loss"]["score_b"] == 9 + 9.25
    assert by_id["tie"]["margin"] == 0 and not by_id["tie"]["consistent"]
    # err500: ab gives A 6, B 7; ba gives B 7, A 6.5 -> margin -1.5
    assert by_id["err500"]["margin"] == -1.5
    assert [o["attempts"] for o in by_id["fixme"]["orders"]] == [2, 2]
    assert by_id["fixme"]["orders"][0]["raw"] == ["Here are my scores:\n8 2", "8 2"]
    assert by_id["garbage"]["orders"][0]["attempts"] == 3 and len(by_id["garbage"]["orders"]) == 1

    assert (res["wins"], res["ties"], res["losses"], res["malformed"]) == (3, 1, 2, 1)
    assert res["n"] == 6 and res["n_items"] == 7 and res["malformed_ids"] == ["garbage"]
    assert res["win_rate"] == pytest.approx((3 + 0.5) / 6)
    assert res["win_rate_malformed_as_ties"] == pytest.approx((3 + 1) / 7)
    assert res["ci95"][0] <= res["win_rate"] <= res["ci95"][1]
    assert res["retried_malformed"] == 2 + 2  # garbage: 2 re-asks; fixme: 1 per order
    assert res["settings"]["judge"]["model"] == "judge-from-env"
    assert res["settings"]["judge"]["base_url"] == server.url
    assert "secret" not in json.dumps(res)

    # Requests: malformed asked 1 + 2 times, never in the other order; 500 and timeout retried.
    assert server.count("Q-garbage?", "ab") == 3 and server.count("Q-garbage?", "ba") == 0
    assert server.count("Q-fixme?", "ab") == 2 and server.count("Q-fixme?", "ba") == 2
    assert server.count("Q-err500?", "ab") == 2 and server.count("Q-err500?", "ba") == 2
    assert server.count("Q-slow?", "ab") == 2 and server.count("Q-slow?", "ba") == 1
    assert server.count("Q-win?") == 2

    # Request bodies: the paper's prompt, both orders, model, temperature 0, key, path.
    for req in server.requests:
        assert req["path"] == "/v1/chat/completions"
        assert req["auth"] == "Bearer secret-123"
        assert req["body"]["model"] == "judge-from-env"
        assert req["body"]["temperature"] == 0
        assert [m["role"] for m in req["body"]["messages"]] == ["user"]
    win_prompts = {r["order"]: r["body"]["messages"][0]["content"] for r in server.requests
                   if r["question"] == "Q-win?"}
    it = items[0]
    assert win_prompts["ab"] == J.render_prompt(it["question"], it["answer_a"], it["answer_b"])
    assert win_prompts["ba"] == J.render_prompt(it["question"], it["answer_b"], it["answer_a"])
    for prompt in win_prompts.values():
        flat = re.sub(r"\s+", " ", prompt)
        assert all(s in flat for s in PAPER_SENTENCES)
    assert "A: answer win {a}" in win_prompts["ab"]  # braces in answers survive

    # Artefacts: summary JSON and the per-item JSONL (in item order), no partial left.
    on_disk = read_json(out)
    assert on_disk["win_rate"] == res["win_rate"] and len(on_disk["items"]) == 7
    assert on_disk["label"] == {"a": "fusionroute", "b": "finetuned"}
    rows = read_jsonl(str(out) + ".items.jsonl")
    assert [r["id"] for r in rows] == names
    assert not Path(str(out) + ".items.jsonl.partial").exists()


def test_http_retries_are_bounded_and_4xx_not_retried(env):
    with ChatServer(lambda q, o, k, answers=None: ("status", 500 if q == "Q-a?" else 400)) as server:
        judge = make_judge(server, http_retries=1)
        with pytest.raises(J.JudgeHTTPError):
            J.judge_item(judge, item("a"))
        assert server.count("Q-a?") == 2
        with pytest.raises(J.JudgeError) as info:
            J.judge_item(judge, item("b"))
        assert not isinstance(info.value, J.JudgeHTTPError)
        assert server.count("Q-b?") == 1


def test_timeouts_are_bounded(env):
    with ChatServer(lambda q, o, k, answers=None: ("sleep", 1.0, "8 6")) as server:
        judge = make_judge(server, timeout_s=0.3, http_retries=1)
        t0 = time.monotonic()
        with pytest.raises(J.JudgeHTTPError):
            J.judge_item(judge, item("a"))
        assert time.monotonic() - t0 < 3
        assert server.count("Q-a?") == 2


def test_resume_after_failure_and_cache_invalidation(env, tmp_path):
    broken = {"c"}

    def script(q, o, k, answers=None):
        name = q[2:-1]
        if name in broken:
            return ("status", 503)
        return ("ok", "8 6" if o == "ab" else "6 8")

    items = [item("a"), item("b"), item("c")]
    out = tmp_path / "res.json"
    with ChatServer(script) as server:
        judge = make_judge(server, http_retries=0)
        with pytest.raises(J.JudgeHTTPError):
            J.judge_pairs(judge, items, out_path=out, workers=1)
        assert not out.exists()
        assert server.count("Q-a?") == 2 and server.count("Q-b?") == 2

        broken.clear()
        res = J.judge_pairs(judge, items, out_path=out, workers=1)
        assert res["wins"] == 3 and res["win_rate"] == 1.0
        # a and b came from the cache; only c was asked (both orders).
        assert server.count("Q-a?") == 2 and server.count("Q-b?") == 2
        assert server.count("Q-c?") == 3  # 1 failed + 2

        n_before = len(server.requests)
        again = J.judge_pairs(judge, items, out_path=out, workers=1)
        assert len(server.requests) == n_before and again["win_rate"] == 1.0

        # A changed answer re-judges only that item.
        changed = [items[0], dict(items[1], answer_b="B: something else"), items[2]]
        J.judge_pairs(judge, changed, out_path=out, workers=1)
        assert len(server.requests) == n_before + 2 and server.count("Q-b?") == 4

        # Different judge settings (model) -> everything is judged again.
        other = make_judge(server, model="another-judge", http_retries=0)
        J.judge_pairs(other, changed, out_path=out, workers=2)
        assert len(server.requests) == n_before + 2 + 6


def test_items_from_generations_and_cli(env, tmp_path):
    from fusionroute.io import write_jsonl
    gens_a = tmp_path / "a.jsonl"
    gens_b = tmp_path / "b.jsonl"
    write_jsonl(gens_a, [{"id": n, "prompt": f"### Instruction:\nQ-{n}?\n", "completion": f"A: {n}",
                          "n_tokens": 3} for n in ("win", "tie")])
    write_jsonl(gens_b, [{"id": n, "prompt": "ignored", "completion": f"B: {n}", "n_tokens": 3}
                         for n in ("tie", "win")])
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"win": "Q-win?", "tie": "Q-tie?"}))
    items = J.items_from_generations(gens_a, gens_b, questions={"win": "Q-win?"})
    assert items[0] == {"id": "win", "question": "Q-win?", "answer_a": "A: win",
                        "answer_b": "B: win"}
    assert items[1]["question"] == "### Instruction:\nQ-tie?\n"
    with pytest.raises(ValueError):
        J.items_from_generations(gens_a, [{"id": "win", "completion": "x"}])

    with ChatServer(default_script) as server:
        env.setenv("OPENAI_BASE_URL", server.url)
        out = tmp_path / "cli.json"
        rc = J.main(["--a", str(gens_a), "--b", str(gens_b), "--out", str(out), "--model", "m",
                     "--questions", str(questions), "--timeout-s", "5"])
    assert rc == 0
    res = read_json(out)
    assert (res["wins"], res["ties"], res["n"]) == (1, 1, 2) and res["win_rate"] == 0.75


def test_duplicate_ids_and_missing_fields_rejected():
    judge = J.VerifierJudge(score_fn=lambda *a, **k: {"samples": [{"correct": True}]})
    with pytest.raises(ValueError):
        J.judge_pairs(judge, [item("a", reference={"benchmark": "x", "record": {}})] * 2)
    with pytest.raises(ValueError):
        J.judge_pairs(judge, [item("a")])  # the verifier needs a reference
    with pytest.raises(ValueError):
        J.judge_pairs(judge, [{"id": "a", "question": "q", "answer_a": "x"}])


# ------------------------------------------------------------------------------------------------
# Offline verifier judge
# ------------------------------------------------------------------------------------------------

# A real IFEval record (the HF dataset's schema) with four instructions whose checkers are
# deterministic; the answers below follow 4, 3, 2, 1 and 0 of them in strict mode.
IFEVAL_RECORD = {
    "id": "7", "key": 7,
    "prompt": "Describe a sunny day. Your entire response should be in English, and in all lowercase "
              "letters. Do not use any commas. Include the keywords red and blue. Wrap your entire "
              "response with a title in double angular brackets, i.e. <<title>>.",
    "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma",
                            "keywords:existence", "detectable_format:title"],
    "kwargs": [{}, {}, {"keywords": ["red", "blue"]}, {}],
}
IFEVAL_ANSWERS = {  # answer -> instructions followed (of 4)
    "<<a sunny day>>\nthe red sun rises over the blue sea and the day is warm": 4,
    "<<a sunny day>>\nthe red sun rises, the blue sea shines": 3,        # comma
    "the sun is red and the sea is blue, warm": 2,                      # comma, no title
    "The Sun Is Red, The Sea Is Blue": 1,                               # only the keywords
    "Nothing, At All": 0,
}
GSM8K_RECORD = {"id": "0", "question": "Tom has 3 apples and buys 4 more. How many?",
                "answer": "3 + 4 = 7\n#### 7"}


def test_real_ifeval_scorer_writes_what_partial_credit_reads():
    """The seam: the judge's fraction comes from the fields the real IFEval scorer writes."""
    from fusionroute.eval.scoring import score_benchmark

    for answer, followed in IFEVAL_ANSWERS.items():
        sample = score_benchmark("ifeval", [{"id": "7", "completion": answer}],
                                 [IFEVAL_RECORD])["samples"][0]
        assert len(sample["failed_instructions"]) == 4 - followed, (answer, sample)
        assert J._instruction_fraction(sample) == followed / 4
    gsm8k = score_benchmark("gsm8k", [{"id": "0", "completion": "The answer is: 8"}],
                            [GSM8K_RECORD])["samples"][0]
    assert J._instruction_fraction(gsm8k) is None


def test_verifier_judge_protocol_and_partial_credit(tmp_path):
    """Real scorers throughout: gsm8k items score 10 or 1; an incorrect IFEval answer scores
    1 + 9 * fraction of its instructions followed (0.25 grid), unless partial credit is off."""
    judge = J.VerifierJudge()
    ref = {"benchmark": "gsm8k", "record": GSM8K_RECORD}
    right, wrong = "3 + 4 = 7.\nThe answer is: 7", "3 + 4 = 8.\nThe answer is: 8"
    text = judge.respond(J.JudgeRequest(prompt="p", question="q", answer1=wrong, answer2=right,
                                        reference=ref))
    assert J.parse_scores(text) == (1.0, 10.0)
    ifref = {"benchmark": "ifeval", "record": IFEVAL_RECORD}
    three, one = list(IFEVAL_ANSWERS)[1], list(IFEVAL_ANSWERS)[3]
    assert [judge.score_answer(a, ifref)[0] for a in IFEVAL_ANSWERS] == [10.0, 7.75, 5.5, 3.25, 1.0]
    assert judge.score_answer(three, ifref)[1] == "0.75 of instructions followed"
    items = [
        {"id": "w", "question": "q", "answer_a": right, "answer_b": wrong, "reference": ref},
        {"id": "l", "question": "q", "answer_a": wrong, "answer_b": right, "reference": ref},
        {"id": "t", "question": "q", "answer_a": wrong, "answer_b": "The answer is: 9",
         "reference": ref},
        {"id": "p", "question": "q", "answer_a": three, "answer_b": one, "reference": ifref},
    ]
    res = J.judge_pairs(judge, items, out_path=tmp_path / "v.json", workers=2)
    verdicts = {r["id"]: r["verdict"] for r in res["items"]}
    assert verdicts == {"w": "win", "l": "loss", "t": "tie", "p": "win"}
    p = next(r for r in res["items"] if r["id"] == "p")
    # 3/4 followed -> 1 + 9*0.75 = 7.75; 1/4 -> 3.25 (0.25 grid); summed over both orders.
    assert p["score_a"] == 2 * 7.75 and p["score_b"] == 2 * 3.25
    assert res["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert res["assistant1_preferred"] == pytest.approx(0.375)  # 3 of 8 judgements, no bias
    with pytest.raises(J.JudgeError):
        judge.respond(J.JudgeRequest(prompt="p", question="q", answer1="a", answer2="b"))
    # partial_credit: false (the config's judge.verifier.partial_credit): both IFEval answers
    # are simply incorrect, so the pair ties; the setting is part of the settings hash.
    strict = J.make_judge({"backend": "verifier", "partial_credit": False})
    assert [strict.score_answer(a, ifref)[0] for a in (three, one)] == [1.0, 1.0]
    res_strict = J.judge_pairs(strict, items[3:])
    assert res_strict["items"][0]["verdict"] == "tie"
    assert res_strict["settings_hash"] != res["settings_hash"]


def test_verifier_judge_with_real_gsm8k_scorer():
    judge = J.VerifierJudge()
    items = [{"id": "0", "question": GSM8K_RECORD["question"],
              "reference": {"benchmark": "gsm8k", "record": GSM8K_RECORD},
              "answer_a": "3 + 4 = 7.\nThe answer is: 7", "answer_b": "3 + 4 = 8.\nThe answer is: 8"}]
    res = J.judge_pairs(judge, items)
    assert res["items"][0]["verdict"] == "win"
    assert res["items"][0]["orders"][0]["scores"] == [10.0, 1.0]


def test_verifier_judge_with_real_ifeval_scorer():
    record = {"id": "1", "key": 1, "prompt": "Write about cats. Answer in all lowercase letters "
              "and do not use any commas.",
              "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
              "kwargs": [{}, {}]}
    judge = J.VerifierJudge()
    good = "cats are small and they sleep a lot"
    half = "cats are small, and they sleep a lot"  # lowercase but has a comma
    bad = "Cats Are Small, And They Sleep A Lot"
    ref = {"benchmark": "ifeval", "record": record}
    assert [judge.score_answer(a, ref)[0] for a in (good, half, bad)] == [10.0, 5.5, 1.0]


def test_resume_after_sigkill(env, tmp_path):
    """A judge process killed mid-run keeps its finished comparisons (real SIGKILL)."""
    import os
    import signal
    import subprocess
    import sys

    release = threading.Event()

    def script(q, o, k, answers=None):
        if q == "Q-c?" and not release.is_set():
            release.wait(20)
            return ("ok", "x")
        return ("ok", "8 6" if o == "ab" else "6 8")

    items = [item("a"), item("b"), item("c")]
    items_path = tmp_path / "items.json"
    items_path.write_text(json.dumps(items))
    out = tmp_path / "res.json"
    partial = Path(str(out) + ".items.jsonl.partial")
    with ChatServer(script) as server:
        code = (
            "import json, sys\n"
            "from fusionroute.eval import judge as J\n"
            f"j = J.OpenAIJudge('m', base_url={server.url!r}, api_key='k', timeout_s=60)\n"
            f"J.judge_pairs(j, json.load(open({str(items_path)!r})), out_path={str(out)!r},"
            " workers=1)\n")
        proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if server.count("Q-c?") >= 1:
                    break
                time.sleep(0.05)
            assert server.count("Q-c?") == 1, "the child never reached item c"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        release.set()
        assert not out.exists() and partial.exists()
        n_before = len(server.requests)
        res = J.judge_pairs(make_judge(server, model="m", timeout_s=5), items, out_path=out,
                            workers=1)
        assert res["wins"] == 3
        # Only c was asked again (both orders); a and b came from the killed run's partial file.
        assert len(server.requests) == n_before + 2
        assert server.count("Q-a?") == 2 and server.count("Q-b?") == 2
