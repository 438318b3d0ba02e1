"""Checks the engine's TensorBoard event files with the tensorboard package's own code
(run it through scripts/check-tensorboard, which installs the pinned package).

  tensorboard_check.py run ENGINE      # a tiny run, a kill-like torn tail, a rewinding resume; checks all
  tensorboard_check.py check RUN_DIR   # checks RUN_DIR/tb against RUN_DIR's metrics.jsonl and telemetry.jsonl
  tensorboard_check.py golden OUT      # writes fixtures/tensorboard/golden.tfevents with tensorboard's writer

`check` reads every file of RUN_DIR/tb twice:
- record by record: the TFRecord framing with tensorboard's masked CRC32C (a bad length or
  data CRC fails; a torn last record is allowed only in a file that is not the newest, a
  killed invocation's), each record parsed as a tensorboard `Event` and re-serialized to the
  same bytes, the first record of each file `file_version: "brain.Event:2"`;
- with tensorboard's `EventAccumulator` (size_guidance 0: everything kept), which merges the
  files and applies their `SessionLog START`s: every scalar of every metrics.jsonl record is
  there, at its step, equal to the record's value as a 32-bit float, each tag at exactly the
  steps metrics.jsonl has it (no duplicates, no steps a resume trained again); every
  telemetry step's values are one telemetry.jsonl sample's; the `config` text (plugin
  "text") of the last invocation is RUN_DIR/config.toml.
Exit 1 with a message on the first failure.
"""

import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.record_writer import RecordWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(msg):
    print(f"check-tensorboard: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


# The tags of a metrics.jsonl field, as engine/src/tensorboard.rs (metrics_group) groups them.
def metrics_group(key):
    if key in ("loss", "val_loss", "lr", "grad_norm"):
        return "train"
    if key in ("tokens_per_s", "mfu", "tokens"):
        return "perf"
    if key in ("micro_batch", "grad_accum"):
        return "plan"
    if key.endswith("_ms") or key == "time_s":
        return "time"
    return "metrics"


def numbers(record, skip):
    """(tag, value) of every number of a JSON record, nested objects as outer/inner."""
    out = {}
    for key, v in record.items():
        if key in skip or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[f"{metrics_group(key)}/{key}"] = float(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if k not in skip and isinstance(x, (int, float)) and not isinstance(x, bool):
                    out[f"{key}/{k}"] = float(x)
    return out


def telemetry_numbers(sample):
    out = {}
    for part in ("gpu", "host"):
        if sample.get(part):
            out.update(numbers({part: sample[part]}, {"index"}))
    return out


def read_records(path, torn_ok):
    """The Events of one file, checked record by record."""
    data = open(path, "rb").read()
    events, at = [], 0
    while at < len(data):
        if len(data) - at < 12 or len(data) - at < 16 + struct.unpack("<Q", data[at : at + 8])[0]:
            if torn_ok:
                break
            fail(f"{path}: a torn record at byte {at} in the newest file")
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[at + 8 : at + 12])[0] != masked_crc32c(header):
            fail(f"{path}: the length CRC of the record at byte {at} is wrong")
        body = data[at + 12 : at + 12 + length]
        if struct.unpack("<I", data[at + 12 + length : at + 16 + length])[0] != masked_crc32c(body):
            fail(f"{path}: the data CRC of the record at byte {at} is wrong")
        event = event_pb2.Event.FromString(body)
        if event.SerializeToString() != body:
            fail(f"{path}: the record at byte {at} is not protobuf's own encoding of {event}")
        events.append(event)
        at += 16 + length
    if not events or events[0].file_version != "brain.Event:2":
        fail(f"{path}: the first record is not file_version brain.Event:2: {events[:1]}")
    return events


def check(run_dir):
    tb = os.path.join(run_dir, "tb")
    files = sorted(glob.glob(os.path.join(tb, "events.out.tfevents.*")))
    if not files:
        fail(f"no event files in {tb}")
    records = sum(len(read_records(f, torn_ok=(f != files[-1]))) for f in files)
    metrics = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    samples_path = os.path.join(run_dir, "telemetry.jsonl")
    samples = [json.loads(l) for l in open(samples_path)] if os.path.exists(samples_path) else []

    acc = event_accumulator.EventAccumulator(tb, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}

    # Every number of every record, at its step, and each tag at exactly those steps.
    want = {}
    for r in metrics:
        for tag, v in numbers(r, {"step"}).items():
            want.setdefault(tag, []).append((r["step"], v))
    for tag, points in want.items():
        got = scalars.get(tag)
        if got is None:
            fail(f"tag {tag} (from metrics.jsonl) is not in the event files; they have {sorted(scalars)}")
        got_steps = [e.step for e in got]
        if got_steps != [s for s, _ in points]:
            fail(f"tag {tag}: steps {got_steps} in the event files, {[s for s, _ in points]} in metrics.jsonl")
        for e, (step, v) in zip(got, points):
            if not same(e.value, f32(v)):
                fail(f"tag {tag} step {step}: {e.value} in the event files, {v} (f32 {f32(v)}) in metrics.jsonl")

    # Telemetry: each step's values are those of one sample.
    telemetry_tags = [t for t in scalars if t.startswith(("gpu/", "host/"))]
    by_step = {}
    for tag in telemetry_tags:
        for e in scalars[tag]:
            by_step.setdefault(e.step, {})[tag] = e.value
    if samples and not by_step:
        fail("telemetry.jsonl has samples, the event files no telemetry")
    candidates = [telemetry_numbers(s) for s in samples]
    for step, values in by_step.items():
        if not any(all(tag in c and same(v, f32(c[tag])) for tag, v in values.items()) for c in candidates):
            fail(f"the telemetry at step {step} ({values}) is no sample of telemetry.jsonl")
    steps = sorted(by_step)
    if len(steps) != len(set(steps)) or any(len(scalars[t]) != len({e.step for e in scalars[t]}) for t in telemetry_tags):
        fail("a telemetry tag has a step twice")
    unexpected = set(scalars) - set(want) - set(telemetry_tags)
    if unexpected:
        fail(f"tags in the event files that metrics.jsonl has no field for: {sorted(unexpected)}")

    # The resolved config, as the text plugin reads it.
    texts = acc.Tensors("config") if "config" in acc.Tags()["tensors"] else []
    if not texts:
        fail("no config text in the event files")
    plugin = acc.SummaryMetadata("config").plugin_data.plugin_name
    if plugin != "text":
        fail(f"the config's plugin is {plugin!r}, not 'text'")
    last = texts[-1].tensor_proto.string_val[0].decode()
    config = open(os.path.join(run_dir, "config.toml")).read()
    body = "\n".join(l[4:] for l in last.split("\n")[2:])
    if body.rstrip("\n") != config.rstrip("\n"):
        fail(f"the last config text is not config.toml:\n{last}")
    tags = len(want) + len(telemetry_tags)
    print(
        f"check-tensorboard: {run_dir}: {len(files)} event files, {records} records; {tags} scalar tags "
        f"({len(telemetry_tags)} telemetry) at {len(metrics)} steps ({metrics[0]['step']}-{metrics[-1]['step']}), "
        f"{sum(len(p) for p in want.values())} values equal to metrics.jsonl, telemetry at {len(by_step)} steps; "
        f"config text at steps {[t.step for t in texts]}"
    )


def run(engine):
    config = os.path.join(ROOT, "configs", "shakespeare-char.toml")
    out = tempfile.mkdtemp(prefix="check-tensorboard.")
    sets = [
        "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.context_length=16", "train.seq_len=16",
        "train.batch_size=2", "train.eval_batches=1", "train.eval_interval=3", "train.checkpoint_interval=2",
        "run.device=cpu", "run.name=tb", f"run.out_dir='{out}'", "logs.tensorboard=true", "logs.telemetry_interval_ms=50",
        "logs.alert_data_stall=0.9999",
    ]

    def train(max_steps, *extra):
        args = [engine, "train", config, "--quiet"] + [a for s in sets + [f"train.max_steps={max_steps}"] for a in ("--set", s)]
        p = subprocess.run(args + list(extra), capture_output=True, text=True)
        if p.returncode != 0:
            fail(f"{' '.join(args + list(extra))} failed:\n{p.stderr}")

    run_dir = os.path.join(out, "tb")
    # 80 steps: telemetry has time to sample (every 50 ms) while the run trains.
    train(80)
    # A killed run: the last record torn (cut short), as a kill during its write leaves it.
    (first,) = glob.glob(os.path.join(run_dir, "tb", "events.out.tfevents.*"))
    size = os.path.getsize(first)
    with open(first, "r+b") as f:
        f.truncate(size - 7)
    # A resume from step 40: steps 41-80 are trained again (and TensorBoard drops the first
    # file's values from step 41 on), then on to 100.
    train(100, "--resume-step", "40")
    check(run_dir)
    shutil.rmtree(out)


def golden(path):
    """The events of engine/src/tensorboard.rs's golden test, written by tensorboard."""
    scalars = [("train/loss", 5.5451774), ("train/lr", 1e-3), ("memory/peak", 123456789.0), ("time/step_ms", -0.0),
               ("perf/mfu", float("inf")), ("train/grad_norm", float("nan"))]
    text = '# config\n\n    [train]\n    lr = 0.001\n    name = "h\u00e9"\n'

    def summary(values):
        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values])

    events = [
        event_pb2.Event(wall_time=1700000000.25, file_version="brain.Event:2"),
        event_pb2.Event(wall_time=1700000001.5, step=5, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)),
        event_pb2.Event(wall_time=1700000002.75, summary=text_summary.text_pb("config", text)),
        event_pb2.Event(wall_time=1700000003.0, step=7, summary=summary(scalars)),
        event_pb2.Event(wall_time=1700000004.125, step=300, summary=summary(scalars[:1])),
    ]
    with open(path, "wb") as f:
        writer = RecordWriter(f)
        for e in events:
            writer.write(e.SerializeToString())
    print(f"check-tensorboard: wrote {path} ({len(events)} events)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("run", "check", "golden"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    {"run": run, "check": check, "golden": golden}[sys.argv[1]](sys.argv[2])
