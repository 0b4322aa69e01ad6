"""200 seeded random mutations of a sweep's summary.json, config.yaml and event files (issue 28):
`status`, `table`, `figure` and `report` each end with exit 0 or 2, never 1, never a traceback,
in seconds, and every run they do not read is named (the untouched runs are always read).

Eight runs of ten are mutated per round, one mutation each, over 25 rounds; the readers run
in-process (CliRunner), as the CLI runs them."""

from __future__ import annotations

import csv
import json
import random
import shutil
import struct
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from typer.testing import CliRunner

from fake_runs import write_final_run
from resexp.cli import app

ROUNDS, MUTATED = 25, 8
HOSTILE = [float("nan"), float("inf"), -1, 0, 10**30, 1e308, "abc", "", [], {}, None, True, [1, 2], {"a": {"b": 1}},
           "2026-01-01T00:00:00", "9" * 1000, -0.5, 101]
CONFIG_KEYS = ["seed", "model", "model.name", "model.depth", "model.residual", "data", "data.name", "optim",
               "optim.name", "trainer", "trainer.max_iters", "trainer.batch_size", "trainer.eval_every"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_base")
    for seed in range(5):
        write_final_run(root, "plain20", 20, False, seed, 5.0 + seed / 10, 9.0 + seed / 10)
        write_final_run(root, "plain56", 56, False, seed, 8.0 + seed / 10, 12.0 + seed / 10)
    return root


def damage_bytes(rng: random.Random, data: bytes) -> bytes:
    kind = rng.choice(["truncate", "flip", "random", "empty", "append"])
    if kind == "truncate":
        return data[:rng.randrange(len(data))]
    if kind == "flip":
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    if kind == "random":
        return rng.randbytes(rng.randrange(1, 4000))
    if kind == "append":
        return data + rng.randbytes(rng.randrange(1, 100))
    return b""


def mutate_summary(rng: random.Random, path: Path) -> str:
    summary = json.loads(path.read_text())
    kind = rng.choice(["value", "value", "value", "delete", "bytes", "nest", "huge", "type"])
    if kind == "value":
        key = rng.choice([*summary, "segments", "updated", "eval_split", "status"])
        summary[key] = rng.choice(HOSTILE + [[{"start": "a"}], "finished", "val"])
        path.write_text(json.dumps(summary))
    elif kind == "delete":
        del summary[rng.choice(list(summary))]
        path.write_text(json.dumps(summary))
    elif kind == "bytes":
        path.write_bytes(damage_bytes(rng, path.read_bytes()))
    elif kind == "nest":
        depth = rng.choice([50, 5000, 200_000])
        path.write_text(json.dumps({**summary, "extra": None})[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}")
    elif kind == "huge":
        path.write_text(json.dumps({**summary, "note": "x" * (2 * 2**20)}))
    else:
        path.write_text(json.dumps(rng.choice([[summary], "finished", 5, None])))
    return f"summary.json {kind}"


def mutate_config(rng: random.Random, path: Path) -> str:
    kind = rng.choice(["value", "value", "value", "bytes", "bomb", "huge", "nest"])
    if kind == "value":
        cfg = yaml.safe_load(path.read_text())
        key = rng.choice(CONFIG_KEYS)
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[last] = rng.choice(HOSTILE + ["${missing.key}", "${oc.env:NOT_SET_ANYWHERE}"])
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    elif kind == "bytes":
        path.write_bytes(damage_bytes(rng, path.read_bytes()))
    elif kind == "bomb":
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
        path.write_text(path.read_text() + "\n".join(lines) + "\n")
    elif kind == "huge":
        path.write_text(path.read_text() + "note: " + "x" * (2 * 2**20) + "\n")
    else:
        path.write_text(path.read_text() + "deep: " + "[" * 100_000 + "]" * 100_000 + "\n")
    return f"config.yaml {kind}"


def mutate_events(rng: random.Random, path: Path) -> str:
    kind = rng.choice(["bytes", "bytes", "huge record"])
    if kind == "bytes":
        path.write_bytes(damage_bytes(rng, path.read_bytes()))
    else:
        header = struct.pack("<Q", rng.choice([2**40, 2**63, 17 * 2**20]))
        path.write_bytes(path.read_bytes() + header + struct.pack("<I", masked_crc32c(header)))
    return f"events {kind}"


def test_two_hundred_mutations_end_every_reader_in_one_line_or_a_listing(base, tmp_path):
    rng = random.Random(28)
    runner = CliRunner()
    for round_ in range(ROUNDS):
        root = tmp_path / f"round{round_}"
        shutil.copytree(base, root)
        runs = sorted(p for p in root.iterdir())
        mutated = rng.sample(runs, MUTATED)
        done = {}
        for run in mutated:
            target = rng.choice(["summary", "config", "events"])
            if target == "summary":
                done[run] = mutate_summary(rng, run / "summary.json")
            elif target == "config":
                done[run] = mutate_config(rng, run / "config.yaml")
            else:
                done[run] = mutate_events(rng, next((run / "tb").iterdir()))
        untouched = [run for run in runs if run not in done]
        out = tmp_path / f"out{round_}"
        for command, args in (("status", [root]), ("table", [root, "-o", out]),
                              ("figure", [root, "-o", out / "figure6.png"]), ("report", [root, "-o", out / "report"])):
            start = time.perf_counter()
            result = runner.invoke(app, [command, *map(str, args)])
            took = time.perf_counter() - start
            where = f"round {round_}, {command}: {sorted((r.name, m) for r, m in done.items())}\n{result.output}"
            assert result.exit_code in (0, 2), where
            assert "Traceback" not in result.output and "internal error" not in result.output, where
            assert took < 30, where
            if result.exit_code != 0 or command == "status":
                continue
            named = {line.split(" run ", 1)[1].split(": ", 1)[0] for line in result.stderr.splitlines()
                     if line.startswith(("resexp: warning: unreadable run ", "resexp: warning: duplicate run "))}
            assert not named & {str(r) for r in untouched}, where  # the untouched runs are read
            if command == "table":  # and every run is a seed of the table or named
                with (out / "table6.csv").open() as f:
                    assert sum(int(row["seeds"]) for row in csv.DictReader(f)) + len(named) == len(runs), where
        status = runner.invoke(app, ["status", str(root)])
        rows = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:]
                if line.startswith("model=") and not line.split()[0].endswith(":")}  # not the notes below
        assert len(rows) == len(runs) and all(rows[run.name] == "finished" for run in untouched), status.stdout
