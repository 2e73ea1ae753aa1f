"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests and the
paper-world rehearsal: it parses each pairwise judge prompt (question, Assistant 1's and 2's
answers) and answers with what a `script` decides."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_Q = re.compile(r"\[Question\]\n(.*?)\n\n\[The Start of Assistant 1's Answer\]\n(.*?)\n\n"
                r"\[The End of Assistant 1's Answer\]", re.S)


_A2 = re.compile(r"\[The Start of Assistant 2's Answer\]\n(.*?)\n\n\[The End of Assistant 2's Answer\]", re.S)


class ChatServer:
    """`script(question, order, call_index, answers=(answer1, answer2)) -> action`; action is
    ("ok", text), ("status", code), or ("sleep", seconds, text). Order is "ab" if Assistant 1's
    answer starts with "A:"."""

    def __init__(self, script):
        self.script = script
        self.requests: list[dict] = []
        self.calls: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                m = _Q.search(prompt)
                question, first = m.group(1), m.group(2)
                second = _A2.search(prompt).group(1)
                order = "ab" if first.startswith("A:") else "ba"
                with outer.lock:
                    k = outer.calls.get((question, order), 0)
                    outer.calls[(question, order)] = k + 1
                    outer.requests.append({"path": self.path, "body": body,
                                           "auth": self.headers.get("Authorization"),
                                           "question": question, "order": order,
                                           "answer1": first, "answer2": second})
                action = outer.script(question, order, k, answers=(first, second))
                try:
                    if action[0] == "status":
                        self._send(action[1], {"error": {"message": "boom", "type": "server"}})
                        return
                    if action[0] == "sleep":
                        time.sleep(action[1])
                    text = action[-1]
                    self._send(200, {
                        "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, question, order=None):
        return sum(1 for r in self.requests
                   if r["question"] == question and (order is None or r["order"] == order))


def overlap_judge(question, order, k, answers):
    """A small real judge for the rehearsal: each answer scores 1 + 9 x the share of the
    question's words it contains (quarter steps, as the paper's prompt asks); a tie breaks
    towards the shorter answer, since the prompt forbids equal scores."""
    words = set(re.findall(r"\w+", question.lower()))

    def score(answer: str) -> float:
        found = set(re.findall(r"\w+", answer.lower()))
        return 1 + round(36 * len(words & found) / max(1, len(words))) / 4

    first, second = (score(a) for a in answers)
    if first == second:
        first, second = (first, first - 0.25) if len(answers[0]) <= len(answers[1]) else (first - 0.25, first)
    return ("ok", f"{first} {second}\nScores by overlap with the question's words.")
