"""OpenAI worker: uploads the planned files, creates the fine-tuning job (or re-attaches to one) and follows it.

Usage (from the run directory): ``python plan/openai_worker.py plan/openai_job.json``.
Imports only the ``openai`` client and the standard library (plus ``runproto``, shipped beside this file),
so an ejected plan runs where anytune is not installed. The API key is read from the environment variable
the plan names, never from a file. Metrics events become ``metrics.jsonl`` rows; the job's state (ids,
status, how to re-attach and cancel) is kept in ``artifacts/openai/job.json``. Ctrl-C leaves the paid job
running and exits 130; a job that fails or is cancelled exits 1 with the service's own error.
"""
from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runproto  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")
"""Job statuses after which nothing changes."""


class JobFailed(RuntimeError):
    """The remote job ended failed or cancelled; the message holds the service's own error."""


class APIError(RuntimeError):
    """A request the service refused (after the client's retries); the message holds its answer."""


def client_of(spec):
    """The ``openai`` client for the plan's service, key from the environment, the client's own retries."""
    from openai import OpenAI

    key = os.environ.get(spec["key_env"])
    if not key:
        raise APIError(f"the API key variable {spec['key_env']} is not set; export it and run again")
    return OpenAI(api_key=key, base_url=spec["base_url"], max_retries=spec["max_retries"],
                  timeout=spec["timeout_s"])


def plain(obj):
    """An API object as plain JSON data."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return plain(obj.model_dump(mode="json", exclude_unset=False)) if hasattr(obj, "model_dump") else str(obj)


class Follower:
    """Follows one remote job: polls it, streams its new events into metrics.jsonl, keeps its state file."""

    def __init__(self, spec, client, writer):
        self.spec, self.client, self.writer = spec, client, writer
        self.seen, self.last = set(), {}
        self.state = {"provider": spec["provider"], "base_url": spec["base_url"], "attach": spec["attach"],
                      "cancel": spec["cancel"], "estimate_usd": spec["estimate"]["usd"]}
        self.epochs = spec["job"]["method"][spec["job"]["method"]["type"]]["hyperparameters"]["n_epochs"]

    def save(self, **fields):
        """Update the state file atomically."""
        self.state.update({k: v for k, v in fields.items() if v is not None})
        runproto.atomic_write_json(self.spec["state"], self.state)

    def new_events(self, job_id):
        """Events not seen yet, oldest first (the API lists the newest first, ``after`` paging to older ones)."""
        fresh = []
        for event in self.client.fine_tuning.jobs.list_events(job_id, limit=100):
            if event.id in self.seen:
                break
            fresh.append(event)
        for event in fresh:
            self.seen.add(event.id)
        return list(reversed(fresh))

    def metrics_row(self, data):
        """One metrics event's data as a metrics.jsonl row (step, train loss, validation loss, token accuracy)."""
        step, total = data.get("step"), data.get("total_steps")
        row = {"step": step, "max_steps": total, "loss": data.get("train_loss"),
               "eval_loss": data.get("full_valid_loss", data.get("valid_loss")),
               "token_accuracy": data.get("train_mean_token_accuracy"),
               "eval_token_accuracy": data.get("full_valid_mean_token_accuracy",
                                               data.get("valid_mean_token_accuracy"))}
        if step and total:
            row["epoch"] = round(step * self.epochs / total, 4)
        self.last.update({k: v for k, v in row.items() if v is not None})
        self.writer.write(**row)

    def poll(self, job_id):
        """One poll: the job, then its new events (metrics rows; messages printed as the service wrote them)."""
        job = self.client.fine_tuning.jobs.retrieve(job_id)
        for event in self.new_events(job_id):
            if event.type == "metrics" and event.data:
                self.metrics_row(plain(event.data))
            else:
                print(f"[{event.level}] {event.message}", flush=True)
        self.save(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
                  estimated_finish=job.estimated_finish)
        return job

    def follow(self, job_id):
        """Poll until the job ends; returns it."""
        while True:
            job = self.poll(job_id)
            if job.status in TERMINAL:
                return job
            time.sleep(self.spec["poll_seconds"])


def upload(client, path):
    """One file uploaded with purpose fine-tune; returns its id."""
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def start(spec, client, follower):
    """Upload the files and create the job; returns its id (recorded at once, so Ctrl-C can re-attach)."""
    files = {part: upload(client, path) for part, path in spec["files"].items()}
    follower.save(files=files)
    payload = dict(spec["job"], training_file=files["train"])
    if "validation" in files:
        payload["validation_file"] = files["validation"]
    # Ctrl-C waits until the new job's id is recorded: a paid job nobody can re-attach to must not exist
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        job = client.fine_tuning.jobs.create(**payload)
        follower.save(job_id=job.id, status=job.status, model=job.model)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    print(f"created fine-tuning job {job.id} ({job.status}); Ctrl-C leaves it running (it is paid for): "
          f"re-attach with `{spec['attach']}`, cancel with `{spec['cancel']}`", flush=True)
    return job.id


def previous_job(spec):
    """The job an earlier run of this plan started and left running, if any."""
    path = spec["state"]
    state = runproto.read_json(path) if os.path.isfile(path) else {}
    return state.get("job_id") if state.get("status") not in TERMINAL else None


def run(spec, out):
    """Start or re-attach, follow to the end, record the outcome."""
    import openai

    client = client_of(spec)
    writer = runproto.MetricsWriter()
    follower = Follower(spec, client, writer)
    job_id = spec.get("job_id")
    running = previous_job(spec)
    if not job_id and running:
        raise APIError(f"this run directory already has job {running} running, paid for; re-attach with "
                       f"`{spec['attach']}` or cancel it with `{spec['cancel']}` before starting another")
    out["artifacts"] = {"job": runproto.local_artifact(spec["state"])}
    try:
        try:
            if job_id:
                print(f"re-attaching to fine-tuning job {job_id}", flush=True)
                follower.save(job_id=job_id)
            else:
                job_id = start(spec, client, follower)
            out["artifacts"]["job"] = runproto.local_artifact(spec["state"], id=job_id, provider=spec["provider"],
                                                              attach=spec["attach"], cancel=spec["cancel"])
            writer.restart()
            job = follower.follow(job_id)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C (the core's stop) must not cut this short
            if job_id:
                follower.save(detached=True)
                print(f"interrupted: fine-tuning job {job_id} goes on running remotely (it is paid for); "
                      f"re-attach with `{spec['attach']}`, cancel with `{spec['cancel']}`", file=sys.stderr,
                      flush=True)
            raise
    except openai.APIStatusError as exc:
        hint = " (check the key in $" + spec["key_env"] + ")" if exc.status_code == 401 else ""
        raise APIError(f"the API answered {exc.status_code}{hint}: {message_of(exc)}") from None
    except openai.APIConnectionError as exc:
        raise APIError(f"cannot reach {spec['base_url']} after {spec['max_retries']} retries: {exc}") from None
    finish(spec, client, follower, job, out)


def message_of(exc):
    """The service's own error message of a refused request."""
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    return err.get("message") or str(exc)


def finish(spec, client, follower, job, out):
    """Record a finished job: checkpoints, the fine-tuned model, trained tokens and the actual cost; raise
    :class:`JobFailed` with the service's error for a failed or cancelled one."""
    checkpoints = sorted((plain(c) for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)),
                         key=lambda c: c.get("step_number") or 0)  # the API lists the newest first
    price = spec["estimate"]["usd_per_1m_tokens"]
    cost = round(job.trained_tokens * price / 1e6, 4) if job.trained_tokens is not None and price else None
    follower.save(status=job.status, checkpoints=checkpoints, cost_usd=cost, finished_at=job.finished_at,
                  error=plain(job.error) if job.error else None, detached=False)
    final = {k: v for k, v in (("train_loss", follower.last.get("loss")),
                               ("eval_loss", follower.last.get("eval_loss"))) if v is not None}
    out["final"] = final
    if job.status != "succeeded":
        err = job.error
        why = f"{err.code}: {err.message}" + (f" (param: {err.param})" if err.param else "") if err else "no error given"
        raise JobFailed(f"fine-tuning job {job.id} ended {job.status}: {why}")
    out["artifacts"]["model"] = runproto.remote_artifact(
        job.fine_tuned_model, spec["provider"], job=job.id, base_url=spec["base_url"], base_model=job.model,
        trained_tokens=job.trained_tokens, cost_usd=cost, estimate_usd=spec["estimate"]["usd"],
        checkpoints=[c.get("fine_tuned_model_checkpoint") for c in checkpoints])
    if job.finished_at:
        out["train_seconds"] = job.finished_at - job.created_at  # the service's wall time, queue included
    print(f"fine-tuning job {job.id} succeeded: {job.fine_tuned_model} ({job.trained_tokens} trained tokens, "
          f"${cost})", flush=True)


def main(argv):
    """Run the job in ``argv[1]``; record the outcome; exit 0, 1 (failed) or 130 (interrupted, job left running)."""
    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(("openai",))
    with outcome as out:
        run(spec, out)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
