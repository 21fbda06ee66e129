"""A local, stateful server of the OpenAI fine-tuning API for tests: files, jobs, events, checkpoints, cancel and
chat completions, on 127.0.0.1, every request and every 2xx response validated against OpenAI's own OpenAPI
description (``openapi-fine-tuning.json``, vendored from the openai/openai-openapi repository by
``vendor_spec.py``; its 3.0-style ``nullable`` and boolean ``exclusiveMinimum`` normalised for openapi-core's
3.1 validator; ``default: null`` dropped where null is not allowed; discriminators without a mapping, whose
values are not schema names, left to ``oneOf``; ``format: binary`` as 3.1's ``contentMediaType``).

A job advances one stage per ``retrieve``: validating_files -> queued -> running (a metrics event per step,
a checkpoint at each epoch's end) -> succeeded. ``Server.fail`` makes it misbehave as the real service can:

- ``bad_file``: job creation answers 400 (invalid_training_file), as for a file the service cannot read;
- ``rate_limit``: the first job creation answers 429, then the request succeeds (the client retries);
- ``server_error``: job creation answers 500 every time (the client retries, then gives up);
- ``job_failed``: the job ends ``failed`` with an error of the service's;
- ``cancelled``: the job is cancelled while it runs (from elsewhere: another client, the dashboard).

A wrong API key is answered 401. A request that the description does not allow fails the test
(``Server.invalid`` lists what was wrong; the request is answered 400 with the validator's message).
"""
from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SPEC = Path(__file__).with_name("openapi-fine-tuning.json")
KEY = "sk-test-anytune-0123456789"
"""The key the server accepts."""
ROLES = {"system", "user", "assistant", "tool", "developer"}


def normalise(node: Any) -> Any:
    """OpenAPI 3.0 idioms the description still uses, in 3.1 (JSON Schema 2020-12) form, for openapi-core:
    ``nullable: true`` -> null allowed; boolean ``exclusiveMinimum`` -> the numeric one."""
    if isinstance(node, list):
        return [normalise(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: normalise(v) for k, v in node.items()}
    if node.get("exclusiveMinimum") is True and "minimum" in node:
        node["exclusiveMinimum"] = node.pop("minimum")
    elif node.get("exclusiveMinimum") is False:
        node.pop("exclusiveMinimum")
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            keep = {k: node.pop(k) for k in ("description", "default", "example") if k in node}
            node = {"anyOf": [node, {"type": "null"}], **keep}
    if isinstance(node.get("discriminator"), dict) and "mapping" not in node["discriminator"]:
        node.pop("discriminator")  # no mapping: the value is not a schema's name here; oneOf alone decides
    if node.get("format") == "binary" and node.get("type") == "string":  # 3.1 spells a file this way
        node.pop("format")
        node["contentMediaType"] = "application/octet-stream"
    if "default" in node and node["default"] is None and "null" not in str(node.get("type", "")) \
            and "anyOf" not in node:
        node.pop("default")  # `default: null` on a schema that does not allow null (a 3.0 leftover)
    return node


_openapi = None


def openapi():
    """The normalised description as an openapi-core ``OpenAPI`` (built once)."""
    global _openapi
    if _openapi is None:
        from openapi_core import OpenAPI

        spec = normalise(json.loads(SPEC.read_text()))
        _openapi = OpenAPI.from_dict(spec)
    return _openapi


def multipart(body: bytes, content_type: str) -> dict[str, Any]:
    """The fields of a multipart/form-data body (file fields as ``(filename, bytes)``)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    out: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        filename = part.get_filename()
        out[name] = (filename, data) if filename else data.decode()
    return out


def check_training_file(data: bytes, method: str) -> str | None:
    """What the service would find wrong in a training file (None: nothing): JSON lines of the method's
    format, at least 10, roles it knows, an assistant message to learn from."""
    try:
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except ValueError as exc:
        return f"a line is not JSON: {exc}"
    if len(lines) < 10:
        return f"Training file has {len(lines)} example(s), but must have at least 10 examples"
    for i, line in enumerate(lines, 1):
        if method == "supervised":
            msgs = line.get("messages")
            if not isinstance(msgs, list) or not all(isinstance(m, dict) and m.get("role") in ROLES for m in msgs):
                return f"Example {i}: messages missing or with an unknown role"
            if not any(m["role"] == "assistant" for m in msgs):
                return f"Example {i}: no assistant message"
            if any("weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1)) for m in msgs):
                return f"Example {i}: weight is allowed on assistant messages only, as 0 or 1"
            extra = set(line) - {"messages", "tools", "parallel_tool_calls"}
        else:
            inp, good, bad = line.get("input"), line.get("preferred_output"), line.get("non_preferred_output")
            if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list):
                return f"Example {i}: input.messages missing"
            if not (isinstance(good, list) and isinstance(bad, list) and len(good) == len(bad) == 1
                    and good[0].get("role") == bad[0].get("role") == "assistant"):
                return f"Example {i}: preferred_output and non_preferred_output must be one assistant message each"
            extra = set(line) - {"input", "preferred_output", "non_preferred_output"}
        if extra:
            return f"Example {i}: unknown key(s) {sorted(extra)}"
    return None


class Server:
    """The service: start with ``Server().start()``; ``url`` is its base URL (``.../v1``)."""

    def __init__(self, steps_per_epoch: int = 3, fail: str | None = None):
        self.steps_per_epoch, self.fail = steps_per_epoch, fail
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = {}
        self.checkpoints: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, int]] = []
        """(method, path, status) of every request, in order."""
        self.invalid: list[str] = []
        """Requests or responses the API description does not allow."""
        self.bodies: list[dict] = []
        """JSON bodies of job-creation requests."""
        self.answers: dict[str, str] = {}
        """Chat completions: last user message -> the model's answer (default: "I do not know.")."""
        self.chat_models: list[str] = []
        """The model each chat completion asked for, in order."""
        self.hold: int | None = None
        """While set, running jobs stay at this many steps (a long job, for Ctrl-C and re-attach)."""
        self.lock = threading.Lock()
        self.counter = 0
        self.httpd: ThreadingHTTPServer | None = None

    # -- life ----------------------------------------------------------------------------------------

    def start(self) -> "Server":
        """Serve on a free port of 127.0.0.1 in a background thread."""
        openapi()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.handle(self, "GET")

            def do_POST(self):
                server.handle(self, "POST")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def url(self) -> str:
        """The base URL a client is given."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:06d}"

    # -- HTTP ----------------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        from openapi_core.testing import MockRequest, MockResponse

        url = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        ctype = h.headers.get("Content-Type", "")
        args = {k: v[-1] for k, v in parse_qs(url.query).items()}
        request = MockRequest("https://api.openai.com", method.lower(), url.path, args=args,
                              headers=dict(h.headers.items()), data=body,
                              content_type=ctype.split(";")[0] if ctype else None)
        if ctype.startswith("multipart/form-data"):
            request.content_type = ctype  # the boundary is needed to read the form
        try:
            openapi().validate_request(request)
        except Exception as exc:  # the client sent what the description does not allow
            detail = f"{method} {url.path}: {type(exc).__name__}: {exc} {getattr(exc, '__cause__', '')}"
            self.invalid.append(detail)
            return self.send(h, method, url.path, 400, error(detail, "invalid_request_error"))
        if h.headers.get("Authorization") != f"Bearer {KEY}":
            return self.send(h, method, url.path, 401, error("Incorrect API key provided: sk-***.",
                                                             "invalid_request_error", code="invalid_api_key"))
        with self.lock:
            status, payload, headers = self.route(method, url.path, args, body, ctype)
        if 200 <= status < 300:
            response = MockResponse(json.dumps(payload).encode(), status_code=status)
            try:
                openapi().validate_response(request, response)
            except Exception as exc:  # the server itself is wrong: the test must not pass on it
                self.invalid.append(f"response to {method} {url.path}: {type(exc).__name__}: {exc} "
                                    f"{getattr(exc, '__cause__', '')}")
        self.send(h, method, url.path, status, payload, headers)

    def send(self, h, method, path, status, payload, headers=None) -> None:
        self.requests.append((method, path, status))
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def route(self, method: str, path: str, args: dict, body: bytes, ctype: str):
        parts = path.strip("/").split("/")[1:]  # drop v1
        if parts == ["files"] and method == "POST":
            return self.create_file(multipart(body, ctype))
        if parts[:1] == ["files"] and len(parts) == 2:
            return (200, self.files[parts[1]]["object"], None) if parts[1] in self.files else not_found(parts[1])
        if parts == ["fine_tuning", "jobs"] and method == "POST":
            return self.create_job(json.loads(body))
        if parts == ["fine_tuning", "jobs"]:
            jobs = sorted(self.jobs.values(), key=lambda j: j["created_at"], reverse=True)
            return 200, {"object": "list", "data": jobs, "has_more": False}, None
        if parts[:2] == ["fine_tuning", "jobs"]:
            job_id = parts[2]
            if job_id not in self.jobs:
                return not_found(job_id)
            rest = parts[3:]
            if not rest:
                self.advance(job_id)
                return 200, self.jobs[job_id], None
            if rest == ["cancel"]:
                return self.cancel(job_id)
            if rest == ["events"]:
                return 200, self.page(self.events[job_id][::-1], args), None
            if rest == ["checkpoints"]:
                page = self.page(self.checkpoints[job_id][::-1], args)
                page.update(first_id=page["data"][0]["id"] if page["data"] else None,
                            last_id=page["data"][-1]["id"] if page["data"] else None)
                return 200, page, None
        if parts == ["chat", "completions"]:
            return self.chat(json.loads(body))
        return not_found(path)

    @staticmethod
    def page(items: list[dict], args: dict) -> dict:
        """A cursor page: items after the one named ``after``, ``limit`` of them (newest first)."""
        start = 0
        if "after" in args:
            start = next((i + 1 for i, x in enumerate(items) if x["id"] == args["after"]), len(items))
        limit = int(args.get("limit", 20))
        data = items[start:start + limit]
        return {"object": "list", "data": data, "has_more": start + limit < len(items)}

    # -- resources -----------------------------------------------------------------------------------

    def create_file(self, form: dict):
        filename, data = form["file"]
        fid = self.new_id("file")
        obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename or "upload", "purpose": form["purpose"], "status": "processed"}
        self.files[fid] = {"object": obj, "data": data}
        return 200, obj, None

    def create_job(self, body: dict):
        self.bodies.append(body)
        if self.fail == "rate_limit" and sum(1 for r in self.requests if r[2] == 429) == 0:
            return 429, error("Rate limit reached for requests", "requests", code="rate_limit_exceeded"), \
                {"retry-after-ms": "10"}
        if self.fail == "server_error":
            return 500, error("The server had an error while processing your request.", "server_error"), \
                {"retry-after-ms": "10"}
        method = body.get("method", {}).get("type", "supervised")
        for key in ("training_file", "validation_file"):
            fid = body.get(key)
            if fid is None:
                continue
            if fid not in self.files:
                return 400, error(f"invalid {key}: no file {fid}", "invalid_request_error", param=key,
                                  code="invalid_file"), None
            why = check_training_file(self.files[fid]["data"], method)
            if self.fail == "bad_file" and key == "training_file":
                why = why or "Example 3: Invalid file format. Line 3, key \"messages\": messages must be an array"
            if why:
                return 400, error(f"File {fid} has invalid format: {why}", "invalid_request_error", param=key,
                                  code="invalid_training_file"), None
        hp = dict(body["method"][method].get("hyperparameters", {}))
        jid = self.new_id("ftjob")
        self.jobs[jid] = {
            "id": jid, "object": "fine_tuning.job", "model": body["model"], "created_at": int(time.time()),
            "finished_at": None, "fine_tuned_model": None, "organization_id": "org-test", "result_files": [],
            "status": "validating_files", "validation_file": body.get("validation_file"),
            "training_file": body["training_file"], "hyperparameters": {k: v for k, v in hp.items() if k != "beta"},
            "trained_tokens": None, "error": None, "seed": body.get("seed") or 0, "estimated_finish": None,
            "method": body["method"], "metadata": body.get("metadata"),
        }
        self.events[jid], self.checkpoints[jid] = [], []
        self.event(jid, f"Validating training file: {body['training_file']}")
        return 200, self.jobs[jid], None

    def event(self, jid: str, message: str, data: dict | None = None, level: str = "info") -> None:
        e = {"object": "fine_tuning.job.event", "id": self.new_id("ftevent"), "created_at": int(time.time()),
             "level": level, "message": message, "type": "metrics" if data else "message"}
        if data:
            e["data"] = data
        self.events[jid].append(e)

    def advance(self, jid: str) -> None:
        """One stage further on each retrieve; while running, one training step per retrieve."""
        job = self.jobs[jid]
        hp = job["hyperparameters"]
        epochs = hp.get("n_epochs") if isinstance(hp.get("n_epochs"), int) else 1
        total = epochs * self.steps_per_epoch
        if job["status"] == "validating_files":
            job["status"] = "queued"
            self.event(jid, "Files validated, moving job to queued state")
        elif job["status"] == "queued":
            job["status"] = "running"
            self.event(jid, "Fine-tuning job started")
        elif job["status"] == "running":
            done = sum(1 for e in self.events[jid] if e["type"] == "metrics")
            if self.fail == "job_failed" and done == 2:
                job.update(status="failed", finished_at=int(time.time()),
                           error={"code": "invalid_training_file", "param": "training_file",
                                  "message": "The job failed due to an invalid training file. Expected file to "
                                             "have JSONL format with prompt/completion keys."})
                self.event(jid, "The job failed", level="error")
                return
            if self.fail == "cancelled" and done == 1:
                job.update(status="cancelled", finished_at=int(time.time()))
                self.event(jid, "Fine-tuning job cancelled")
                return
            if self.hold is not None and done >= self.hold:
                return
            if done < total:
                step = done + 1
                data = {"step": step, "total_steps": total, "train_loss": round(2.0 / step, 4),
                        "train_mean_token_accuracy": round(0.5 + 0.1 * step / total, 4)}
                if job["validation_file"]:
                    data["valid_loss"] = round(2.2 / step, 4)
                    if step % self.steps_per_epoch == 0:
                        data["full_valid_loss"] = round(2.1 / step, 4)
                self.event(jid, f"Step {step}/{total}: training loss={data['train_loss']}", data)
                if step % self.steps_per_epoch == 0:
                    self.checkpoint(jid, step, data)
                return
            train = self.files[job["training_file"]]["data"]
            job.update(status="succeeded", finished_at=int(time.time()),
                       fine_tuned_model=f"ft:{job['model']}:anytune-test::{jid[-6:]}",
                       trained_tokens=len(train.split()) * epochs)
            self.event(jid, f"New fine-tuned model created: {job['fine_tuned_model']}")
            self.event(jid, "The job has successfully completed")

    def checkpoint(self, jid: str, step: int, data: dict) -> None:
        job = self.jobs[jid]
        cid = self.new_id("ftckpt")
        self.checkpoints[jid].append({
            "object": "fine_tuning.job.checkpoint", "id": cid, "created_at": int(time.time()),
            "fine_tuned_model_checkpoint": f"ft:{job['model']}:anytune-test::{jid[-6:]}:ckpt-step-{step}",
            "fine_tuning_job_id": jid, "step_number": step,
            "metrics": {k: v for k, v in data.items() if k != "total_steps"}})

    def cancel(self, jid: str):
        job = self.jobs[jid]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return 400, error(f"Job {jid} has already completed ({job['status']})", "invalid_request_error"), None
        job.update(status="cancelled", finished_at=int(time.time()))
        self.event(jid, "Fine-tuning job cancelled")
        return 200, job, None

    def chat(self, body: dict):
        self.chat_models.append(body["model"])
        last = next((m.get("content") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        answer = self.answers.get(last, "I do not know.")
        return 200, {
            "id": self.new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": answer, "refusal": None}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }, None


def error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """The API's error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def not_found(what: str):
    return 404, error(f"No such object: {what}", "invalid_request_error"), None


def copy_of(obj: Any) -> Any:
    """A deep copy (tests inspect state without racing the server)."""
    return copy.deepcopy(obj)
