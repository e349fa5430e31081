"""The NVML sampler against a stand-in for nvidia-ml-py: restartable, bound to the CUDA device the graphs use
(not NVML index 0), an energy figure where the GPU has no counter, and `--power auto` only for GPU runs."""

from __future__ import annotations

import sys
import time
import types

import pytest

from seenn_deploy.errors import UserError


class FakeNvml(types.ModuleType):
    """pynvml's calls the sampler makes. GPUs are listed in NVML (PCI) order as (name, bus id, uuid, watts); the
    energy counter integrates each GPU's `watts` over wall time, and raises NotSupported where `counter` is off."""

    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NOT_FOUND = 6
    NVML_CLOCK_SM = 1

    def __init__(self, gpus, counter: bool = True) -> None:
        super().__init__("pynvml")
        self.gpus, self.counter, self.inits = gpus, counter, 0
        self.watts = {i: gpu[3] for i, gpu in enumerate(gpus)}
        self._energy = {i: 0.0 for i in range(len(gpus))}
        self._since = time.perf_counter()

        class NVMLError(Exception):
            def __init__(self, value):
                super().__init__(value)
                self.value = value

        self.NVMLError = NVMLError

    def _tick(self) -> None:
        now = time.perf_counter()
        for i, watts in self.watts.items():
            self._energy[i] += watts * 1000 * (now - self._since)  # mJ
        self._since = now

    def set_watts(self, index: int, watts: float) -> None:
        self._tick()
        self.watts[index] = watts

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        assert self.inits > 0, "nvmlShutdown without nvmlInit"
        self.inits -= 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        for i, gpu in enumerate(self.gpus):
            if gpu[1] == bus:
                return i
        raise self.NVMLError(self.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for i, gpu in enumerate(self.gpus):
            if gpu[2] == uuid:
                return i
        raise self.NVMLError(self.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle][0].encode()

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.watts[handle] * 1000)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetUtilizationRates(self, handle):
        raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)  # as on some boards: the trace keeps None

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        self._tick()
        return int(self._energy[handle])


GPUS = [("GPU A", "0000:17:00.0", "GPU-aaaa", 300.0), ("GPU B", "0000:65:00.0", "GPU-bbbb", 100.0)]


class FakeBusIds(types.ModuleType):
    """cuda-python's runtime as far as the sampler asks it: CUDA device N's PCI bus id."""

    class cudaError_t:
        cudaSuccess = 0

    def __init__(self, buses: list[str]) -> None:
        super().__init__("cuda.bindings.runtime")
        self.buses = buses

    def cudaDeviceGetPCIBusId(self, length, device):
        return 0, self.buses[device].encode() + b"\x00"


@pytest.fixture
def nvml(monkeypatch):
    """Installs a FakeNvml (gpus, counter=...) and, given `cuda_order`, cuda-python reporting those bus ids."""

    def install(gpus=GPUS, counter: bool = True, cuda_order: list[str] | None = None) -> FakeNvml:
        fake = FakeNvml(gpus, counter)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        if cuda_order is None:  # no cuda-python
            for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
                monkeypatch.setitem(sys.modules, name, None)
        else:
            monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
            monkeypatch.setitem(sys.modules, "cuda.bindings", types.ModuleType("cuda.bindings"))
            monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", FakeBusIds(cuda_order))
            sys.modules["cuda.bindings"].runtime = sys.modules["cuda.bindings.runtime"]
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return fake

    return install


def measure(sampler, seconds: float) -> dict:
    sampler.start()
    time.sleep(seconds)
    return sampler.stop()


def test_a_sampler_measures_a_second_run_afresh(nvml):
    from seenn_deploy.profile.nvml import NvmlSampler

    fake = nvml(GPUS[:1])
    sampler = NvmlSampler(0, interval_ms=5)
    first = measure(sampler, 0.3)
    fake.set_watts(0, 50.0)
    second = measure(sampler, 0.3)  # bench --compare fixed measures its two runs with one sampler
    sampler.close()
    assert first["energy_mj"] == pytest.approx(300 * 300, rel=0.25)
    assert second["energy_mj"] == pytest.approx(50 * 300, rel=0.25)
    assert len(second["trace"]) > 5 and {p["mw"] for p in second["trace"]} == {50000.0}
    assert second["trace"][0]["t"] < 0.05 and fake.inits == 0


def test_the_sampler_reads_the_gpu_cuda_runs_on_not_nvml_index_0(nvml, monkeypatch):
    from seenn_deploy.profile.nvml import NvmlSampler

    nvml(cuda_order=["0000:65:00.0", "0000:17:00.0"])  # CUDA numbers the slower GPU B first (fastest first: no)
    sampler = NvmlSampler(0, interval_ms=5)
    assert sampler.gpu_name == "GPU B" and "0000:65:00.0" in measure(sampler, 0.05)["gpu"]
    sampler.close()
    nvml()  # no cuda-python: a UUID in CUDA_VISIBLE_DEVICES still says which GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    assert NvmlSampler(0).gpu_name == "GPU B"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # an index: CUDA's order may not be NVML's, so no guess
    with pytest.raises(UserError, match=r"NVML sees 2 GPUs and cannot tell which is CUDA device 0.*--power none"):
        NvmlSampler(0)
    nvml(GPUS[:1])
    assert NvmlSampler(0).gpu_name == "GPU A"  # one GPU: no question


def test_a_gpu_without_an_energy_counter_gets_the_integral_of_its_power(nvml):
    from seenn_deploy.profile.nvml import NvmlSampler

    nvml(GPUS[:1], counter=False)
    sampler = NvmlSampler(0, interval_ms=5)
    result = measure(sampler, 0.3)
    assert "integral of sampled power" in result["source"]
    assert result["energy_mj"] == pytest.approx(300 * 300, rel=0.25)


def test_power_auto_samples_only_a_run_on_a_gpu(nvml):
    from seenn_deploy.profile.bench import open_power

    nvml(cuda_order=["0000:65:00.0", "0000:17:00.0"])
    assert open_power("auto", None) is None and open_power("none", 0) is None
    with pytest.raises(UserError, match=r"--power nvml measures a GPU, but this run's step graph runs on the CPU"):
        open_power("nvml", None)
    sampler = open_power("auto", 1)
    assert sampler.gpu_name == "GPU A" and sampler.cuda_device == 1
    sampler.close()


def test_bench_on_the_cpu_takes_no_gpu_power(nvml, digits_bundle):
    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.profile.bench import BenchSettings, run_bench

    fake = nvml(GPUS[:1])  # a GPU machine, the bundle run by ONNX Runtime on the CPU
    data = parse_data_spec("digits").load("test").subset(64)
    settings = BenchSettings(batch=16, iterations=1, warmup_s=0, exit="fixed:4")
    report = run_bench(digits_bundle, data.x, data.y, "digits", settings)
    assert report.runs[0].power is None and report.device == "CPUExecutionProvider"
    assert any("runs on the CPU" in note for note in report.notes) and fake.inits == 0
