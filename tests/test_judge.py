"""`gptlab judge`: against a stand-in judge server on 127.0.0.1 (no network is used), written here, that speaks
both the Responses API and Chat Completions as the real `openai` client calls them.

The stand-in scores a response 80 when it says "good" and 30 otherwise, so the per-model means show that the
per-item shuffle is undone; one item always gets an unparseable answer (failed, not zero) and one item's first
answer comes slower than the timeout (retried, then scored). A planted API key must reach the server and
appear in no output and no file.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_cli

from gptlab.errors import UserError
from gptlab.experiments import judge
from gptlab.rundir import read_evaluation, write_task_evaluation

KEY = "sk-planted-4d1f9c0e7b2a-never-print-me"
ITEMS = [
    {"instruction": f"Say something {word}.", "input": "", "output": f"Something {word}."}
    for word in ("nice", "UNPARSEABLE", "kind", "SLOW", "warm", "calm")
]


class StandIn(BaseHTTPRequestHandler):
    calls: list[dict] = []
    slow_seen: set = set()

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/responses"):
            text, api = body["input"], "responses"
        elif self.path.endswith("/chat/completions"):
            text, api = body["messages"][-1]["content"], "chat"
        else:
            self.send_error(404)
            return
        shown = re.findall(r"# Model (\d+)\n```\n(.*?)\n```", text, re.DOTALL)
        StandIn.calls.append({"api": api, "auth": self.headers.get("Authorization"), "shown": shown, "text": text})
        if "SLOW" in text and text not in StandIn.slow_seen:
            StandIn.slow_seen.add(text)
            time.sleep(3)  # past the client's timeout: this try fails, the next one is answered
        if "UNPARSEABLE" in text:
            answer = "Model 1 is rather good, I would say."
        else:
            scores = {
                f"Model {n}": {"score": 80 if "good" in response else 30, "comments": "ok"} for n, response in shown
            }
            answer = "```json\n" + json.dumps(scores) + "\n```"
        if api == "responses":
            payload = {"id": "resp_1", "object": "response", "created_at": 0, "model": body["model"],
                       "status": "completed", "output": [{"type": "message", "id": "msg_1", "status": "completed",
                       "role": "assistant", "content": [{"type": "output_text", "text": answer, "annotations": []}]}]}  # fmt: skip
        else:
            payload = {"id": "chat_1", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": answer}}]}  # fmt: skip
        data = json.dumps(payload).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on the slow answer
            pass


@pytest.fixture
def server():
    StandIn.calls, StandIn.slow_seen = [], set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def write_responses(path: Path, word: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{**item, "model_response": f"A {word} answer."} for item in ITEMS]))
    return path


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_judge_scores_undo_the_shuffle_fail_bad_answers_retry_slow_ones_and_never_show_the_key(tmp_path, server, api):
    good = write_responses(tmp_path / "good" / "responses.json", "good")
    poor = write_responses(tmp_path / "poor.json", "poor")
    # a run whose ift entry names its responses: the judge's mean goes into its evaluation.json
    run = tmp_path / "run"
    write_responses(run / "ift" / "responses.json", "poor")
    write_task_evaluation(run, "ift", {"task": "ift", "test_loss": 2.5, "responses_file": str(run / "ift" / "responses.json")}, "latest")  # fmt: skip
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server}
    result = run_cli(
        "judge", str(good), str(poor), str(run), "--judge-api", api, "--timeout", "1", "--retries", "2",
        "--judge-model", "stand-in", "--json", "--no-progress", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert {call["api"] for call in StandIn.calls} == {api}
    assert all(call["auth"] == f"Bearer {KEY}" for call in StandIn.calls)
    # 6 items: 4 answered at once, the unparseable one tried 3 times, the slow one twice
    assert len(StandIn.calls) == 4 + 3 + 2
    assert printed["scores"] == {
        str(good): {"mean": 80.0, "scored": 5, "failed": 1},
        str(poor): {"mean": 30.0, "scored": 5, "failed": 1},
        str(run): {"mean": 30.0, "scored": 5, "failed": 1},
    }
    firsts = {call["shown"][0][1] for call in StandIn.calls}
    assert len(firsts) > 1  # the order is shuffled per item
    assert "# Reference output\n```\nSomething nice.\n```" in StandIn.calls[0]["text"]
    assert "### Instruction:\nSay something nice." in StandIn.calls[0]["text"]
    [verdict, _] = printed["verdicts"]
    assert verdict["model"] == str(poor) and verdict["difference"] == -50.0 and verdict["pairs"] == 5
    # every item 50 points apart: no spread, so no verdict on p = 0 (verdicts.py's rule), but the reason
    assert (
        verdict["verdict"].startswith("no noise estimate: every paired item differs by -50 points")
        and "p" not in verdict
    )

    judged = json.loads((tmp_path / "good" / "responses.judged.json").read_text())
    assert [item.get("judge_score") for item in judged] == [80.0, None, 80.0, 80.0, 80.0, 80.0]
    assert judged[1]["judge_failed"] == "the answer was not the JSON asked for" and "judge_score" not in judged[1]
    assert (tmp_path / "poor.judged.json").is_file()
    saved = read_evaluation(run)["ift"]
    assert saved["test_loss"] == 2.5 and saved["judge"]["mean"] == 30.0 and saved["judge"]["failed"] == 1

    table = run_cli("judge", str(good), str(poor), "--judge-api", api, "--timeout", "1", "--no-progress", env=env)
    assert table.returncode == 0, table.stderr
    assert re.search(rf"{re.escape(str(good))}\s+80\.0\s+5\s+1", table.stdout)
    assert "over 5 paired items: no noise estimate: every paired item differs by -50 points" in table.stdout
    for text in (result.stdout, result.stderr, table.stdout, table.stderr):
        assert KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_different_items_name_the_first_that_differs_in_one_line(tmp_path):
    first = write_responses(tmp_path / "a.json", "good")
    other = json.loads(first.read_text())
    other[2]["instruction"] = "Something else."
    (tmp_path / "b.json").write_text(json.dumps(other))
    result = run_cli("judge", str(first), str(tmp_path / "b.json"), env={"OPENAI_API_KEY": KEY})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert (
        "b.json: item 2 ('Something else.') differs from" in result.stderr
        and "('Say something kind.')" in result.stderr
    )


def test_the_answer_must_be_the_json_asked_for():
    assert judge.parse_answer('{"Model 1": {"score": 70, "comments": "fine"}, "Model 2": {"score": 0}}', 2) == {
        1: (70.0, "fine"),
        2: (0.0, ""),
    }
    assert judge.parse_answer('{"Model 1": {"score": 70}}', 2) is None  # a model missing
    assert judge.parse_answer('{"Model 1": {"score": 170}, "Model 2": {"score": 1}}', 2) is None  # out of range
    assert judge.parse_answer("no JSON here", 1) is None


def test_no_key_and_no_server_is_one_line(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UserError, match="set OPENAI_API_KEY"):
        judge.Judge("m", "responses", 1.0)


def test_paired_verdicts_follow_the_verdict_rules_and_scipy():
    """Directions in verdicts.py's words, p from SciPy's paired t-test, Holm across the models."""
    from scipy import stats as scipy_stats

    from gptlab.experiments.judge import Scored, Source, paired_verdicts

    base = [50.0, 60.0, 55.0, 70.0, 65.0, 40.0, None]
    models = {
        "better": [70.0, 85.0, 72.0, 90.0, 80.0, 66.0, 10.0],
        "worse": [20.0, 35.0, 30.0, 41.0, 30.0, 15.0, 90.0],
        "same": [52.0, 57.0, 56.0, 69.0, 67.0, 38.0, None],
        "tied": [50.0, 60.0, 55.0, 70.0, 65.0, 40.0, 0.0],
    }
    sources = [Source(name, Path(name + ".json"), []) for name in ["base", *models]]
    verdicts = {v["model"]: v for v in paired_verdicts(sources, [Scored(base), *(Scored(m) for m in models.values())])}
    raw = {}
    for name in ("better", "worse", "same"):
        pairs = [(b, o) for b, o in zip(base, models[name]) if b is not None and o is not None]
        raw[name] = scipy_stats.ttest_rel([o for _, o in pairs], [b for b, _ in pairs]).pvalue
        assert verdicts[name]["pairs"] == 6 and abs(verdicts[name]["p"] - raw[name]) < 1e-12
    ordered = sorted(raw, key=raw.get)
    running = 0.0
    for rank, name in enumerate(ordered):
        running = max(running, min(1.0, (3 - rank) * raw[name]))
        assert abs(verdicts[name]["p_holm"] - running) < 1e-12
    assert verdicts["better"]["verdict"] == "better, beyond noise"
    assert verdicts["worse"]["verdict"] == "worse, beyond noise"
    assert verdicts["same"]["verdict"] == "within noise"
    assert verdicts["tied"]["verdict"].startswith("no noise estimate") and "p_holm" not in verdicts["tied"]
