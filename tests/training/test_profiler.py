"""The profiler on a sampler thread, real DataLoaders, real models and a real torch.profiler trace.

Time is a ManualClock's: loaders and steps advance it by what they would take, so every
figure is exact and none depends on how busy the machine is."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tests.manual_clock import ManualClock
from training.profiler import ProfileSummary, Profiler, parse_nvidia_smi
from training.report import diagnose


class SlowDataset(Dataset):
    """Every item takes `delay_s` of the clock to 'load', like a slow disk or a heavy decode."""

    def __init__(self, n: int, delay_s: float, clock: ManualClock) -> None:
        self.n, self.delay_s, self.clock = n, delay_s, clock

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.clock.advance(self.delay_s)
        return torch.full((64,), float(index)), index % 4


def train(prof: Profiler, loader: DataLoader, model: nn.Module, epochs: int = 1,
          clock: ManualClock | None = None, step_s: float = 0.0) -> None:
    """Real training steps; each also takes `step_s` of a manual clock, when given one."""
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for images, labels in prof.iterate(loader, phase="train"):
            with prof.compute(len(labels)):
                optimiser.zero_grad()
                nn.functional.cross_entropy(model(images), labels).backward()
                optimiser.step()
                if clock is not None:
                    clock.advance(step_s)


def mlp(hidden: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sampler_writes_a_sample_every_half_second(tmp_path, monkeypatch):
    # No GPU to be seen (pynvml fails to import, no nvidia-smi): nothing GPU may be invented.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    clock = ManualClock()
    prof = Profiler(tmp_path, interval_s=0.5, trace_steps=None, clock=clock).start()
    for tick in range(1, 4):
        clock.await_waits(tick)  # the sampler sleeps until its next tick (and sampled the last one)
        clock.advance(0.5)
    clock.await_waits(4)
    clock.advance(0.25)  # between ticks: nothing more until stop
    summary = prof.stop()

    samples = read_jsonl(tmp_path / "system_metrics.jsonl")
    assert [s["t"] for s in samples] == [0.5, 1.0, 1.5, 1.75]  # 3 ticks and a closing sample
    assert summary.samples == len(samples)
    for sample in samples:
        assert 0 <= sample["cpu_percent"] <= 100
        assert len(sample["cpu_per_core"]) == os.cpu_count()
        assert sample["rss_mb"] > 10
        assert "gpu_util" not in sample
    assert summary.cpu_util_mean is not None and summary.peak_rss_mb > 10
    assert summary.gpu_util_mean is None and not summary.gpu_present


def test_first_cpu_sample_is_measured_not_a_placeholder(tmp_path):
    clock = ManualClock()  # never advanced: the only sample is the closing one, covering the whole burn
    prof = Profiler(tmp_path, interval_s=0.3, trace_steps=None, clock=clock).start()
    clock.await_waits(1)  # primed: psutil's first, placeholder reading (0.0) is behind us
    burnt = time.process_time() + 0.3
    while time.process_time() < burnt:  # 0.3 s of this process's CPU, however long that takes
        pass
    prof.stop()
    [sample] = read_jsonl(tmp_path / "system_metrics.jsonl")
    assert sample["cpu_percent"] > 0 and sample["process_cpu_percent"] > 0


def test_step_time_splits_into_data_wait_compute_and_the_rest(tmp_path):
    clock = ManualClock()
    loader = DataLoader(SlowDataset(24, delay_s=0.002, clock=clock), batch_size=4)  # 8 ms wait per batch
    prof = Profiler(tmp_path, trace_steps=None, clock=clock).start()
    t0 = clock.now()
    for epoch in range(2):
        for _ in prof.iterate(loader, phase="train"):
            with prof.compute(4):
                clock.advance(0.005)
            clock.advance(0.003)  # bookkeeping between steps
        for _ in prof.iterate(loader, phase="valid"):
            pass
    wall = clock.now() - t0
    summary = prof.stop()

    steps = read_jsonl(tmp_path / "step_times.jsonl")
    assert [(s["phase"], s["epoch"]) for s in steps] == (
        [("train", 1)] * 6 + [("valid", 1)] * 6 + [("train", 2)] * 6 + [("valid", 2)] * 6
    )
    measured = sum(s["data_wait_s"] + s["compute_s"] + s["other_s"] for s in steps)
    assert measured == pytest.approx(wall)
    train_steps = [s for s in steps if s["phase"] == "train"]
    assert all(s["data_wait_s"] == pytest.approx(0.008) for s in steps)
    assert all(s["compute_s"] == pytest.approx(0.005) and s["other_s"] == pytest.approx(0.003) for s in train_steps)
    assert all(s["compute_s"] == 0 for s in steps if s["phase"] == "valid")  # no compute() there
    assert summary.phase_steps == {"train": 12, "valid": 12}
    assert [s["warmup"] for s in train_steps] == [True] + [False] * 11
    assert summary.steps == 11 and summary.mean_batch_size == 4  # the warm-up step is left out
    assert summary.data_wait_fraction + summary.compute_fraction + summary.other_fraction == pytest.approx(1)
    assert summary.images_per_s == pytest.approx(4 / (summary.mean_step_ms / 1000))


def test_a_slow_data_loader_is_reported_as_data_loader_bound(tmp_path):
    clock = ManualClock()
    slow = DataLoader(SlowDataset(64, delay_s=0.01, clock=clock), batch_size=8)  # 80 ms per batch
    prof = Profiler(tmp_path, trace_steps=None, clock=clock).start()
    train(prof, slow, mlp(), clock=clock, step_s=0.02)
    summary = prof.stop()

    assert summary.data_wait_fraction == pytest.approx(0.8)
    finding = next(f for f in diagnose(summary, []) if f.key == "data-loader-bound")
    assert f"{summary.mean_data_wait_ms:.1f} ms waiting" in finding.evidence
    assert "workers" in finding.action or "cache" in finding.action


def test_a_fast_data_loader_is_not(tmp_path):
    data = TensorDataset(torch.randn(512, 64), torch.randint(0, 4, (512,)))
    fast = DataLoader(data, batch_size=64)  # in memory: batches take none of the clock
    clock = ManualClock()
    prof = Profiler(tmp_path, trace_steps=None, clock=clock).start()
    train(prof, fast, mlp(), epochs=2, clock=clock, step_s=0.02)
    summary = prof.stop()

    assert summary.data_wait_fraction == 0
    assert "data-loader-bound" not in {f.key for f in diagnose(summary, [])}


def test_trace_is_valid_chrome_trace_json_of_the_chosen_steps(tmp_path):
    data = TensorDataset(torch.randn(48, 64), torch.randint(0, 4, (48,)))
    prof = Profiler(tmp_path, trace_steps=(1, 3)).start()
    train(prof, DataLoader(data, batch_size=8), mlp())
    summary = prof.stop()

    trace = json.loads((tmp_path / "trace.json").read_text())
    events = trace["traceEvents"]
    assert isinstance(events, list) and all("ph" in e and "name" in e for e in events)
    names = {e["name"] for e in events}
    assert {"compute", "data_wait"} <= names and any(n.startswith("aten::") for n in names)
    assert summary.trace_path == str(tmp_path / "trace.json")
    assert [s["traced"] for s in read_jsonl(tmp_path / "step_times.jsonl")] == [False, True, True, False, False, False]
    assert summary.steps == 3  # the warm-up step and traced steps run slower: left out of the means


def test_no_trace_when_the_run_is_shorter_than_the_window(tmp_path):
    data = TensorDataset(torch.randn(16, 64), torch.randint(0, 4, (16,)))
    prof = Profiler(tmp_path, trace_steps=(3, 6)).start()
    train(prof, DataLoader(data, batch_size=8), mlp())
    summary = prof.stop()
    assert summary.trace_path is None and not (tmp_path / "trace.json").exists()
    assert summary.steps == 1


def test_gpu_metrics_come_from_nvidia_smi_when_nvml_is_missing(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Tesla T4, 37, 1024, 15360'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError

    prof = Profiler(tmp_path / "out", interval_s=0.2, trace_steps=None, clock=ManualClock()).start()
    summary = prof.stop()  # the closing sample reads the GPU too

    sample = read_jsonl(tmp_path / "out" / "system_metrics.jsonl")[0]
    assert sample["gpu_util"] == [37.0] and sample["gpu_mem_used_mb"] == [1024.0]
    assert summary.gpu_names == ["Tesla T4"] and summary.gpu_util_mean == 37.0
    assert summary.gpu_memory_total_mb == 15360.0
    # A GPU the job never used is itself a finding.
    assert "gpu-unused" in {f.key for f in diagnose(summary, [])}


def test_parse_nvidia_smi_keeps_names_with_commas_and_unreadable_fields():
    rows = parse_nvidia_smi("NVIDIA A10G, 5, 300, 23028\nOdd, Name, [N/A], 12, 100\n")
    assert rows[0] == ("NVIDIA A10G", {"util": 5.0, "mem_used_mb": 300.0, "mem_total_mb": 23028.0})
    assert rows[1][0] == "Odd, Name" and rows[1][1]["mem_used_mb"] == 12.0
    assert rows[1][1]["util"] != rows[1][1]["util"]  # NaN


def test_summary_round_trips_through_its_json_file(tmp_path):
    prof = Profiler(tmp_path, trace_steps=None).start()
    with prof.compute(2):  # compute() alone: a step without data wait
        pass
    summary = prof.stop()
    assert prof.stop() is summary  # stop is idempotent
    assert ProfileSummary.from_dict(json.loads((tmp_path / "profile_summary.json").read_text())) == summary
    assert summary.steps == 1 and summary.mean_data_wait_ms == 0
    assert summary.line().startswith("profile steps=1 ")


def test_bad_use_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="interval_s"):
        Profiler(tmp_path, interval_s=0)
    with pytest.raises(ValueError, match="trace_steps"):
        Profiler(tmp_path, trace_steps=(5, 2))
    with pytest.raises(RuntimeError, match="never started"):
        Profiler(tmp_path).stop()
