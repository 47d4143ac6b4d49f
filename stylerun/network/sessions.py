"""ONNX Runtime sessions for the exported models: device choice, threads, IOBinding.

Targets, per-layer weights, alpha and beta are bound once as device-resident OrtValues;
each evaluation moves only the image in and the loss and gradient out.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stylerun.errors import EvaluationStopped, ModelError, OptionError, mention
from stylerun.network.export import GRAD, ModelFiles
from stylerun.network.loss_graph import (
    ALPHA,
    BETA,
    CONTENT_LOSS,
    CONTENT_WEIGHTS,
    IMAGE,
    LOSS,
    STYLE_GUIDE,
    STYLE_LOSS,
    STYLE_WEIGHTS,
    TV_WEIGHT,
)
from stylerun.options import DEVICES

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime session settings, each chosen by measurement (docs/performance.md,
    tools/bench.py --variants). Passed as a value, never changed globally.

    mem_pattern off: the pre-planned pattern block raised a 512 px transfer's peak RSS from
    ~1.0 to ~1.5 GiB for no measurable speed (A/B 0.98-1.01). spinning off: busy-waiting
    intra-op threads steal the core the other thread (or another process) needs on small
    machines; A/B 0.97 (256 px) and 0.92 (512 px) with it off.
    """

    level: str = "all"  # graph optimization: "disable", "basic", "extended" or "all"
    arena: bool = True
    mem_pattern: bool = False
    spinning: bool = False
    #: Sessions that run one after the other (a tiled evaluation's two passes) share one CPU
    #: arena, so the process holds the larger of their peaks instead of the sum: at 1 MP in
    #: 512 px tiles, 1448 MiB against 1725 MiB, at the same speed.
    shared_arena: bool = False


MEASURED = SessionSettings()

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int | None, settings: SessionSettings = MEASURED,
                    profile_prefix: str | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.graph_optimization_level = _LEVELS[settings.level]
    options.enable_cpu_mem_arena = settings.arena
    options.enable_mem_pattern = settings.mem_pattern
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    if settings.shared_arena and settings.arena:
        _register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


@functools.cache
def _register_shared_arena() -> None:
    """The process's one shared CPU arena (onnxruntime keeps it in its environment; registered once)."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))


def check_device(device: str) -> str:
    """Refuse an unknown device, or `cuda` where this onnxruntime has no CUDA provider, before any work."""
    if device not in DEVICES:
        raise OptionError("device", f"must be one of: {', '.join(DEVICES)}; got {device!r}")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise OptionError(
            "device", "cuda: this onnxruntime has no CUDA provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu with "
            f"`pip install 'stylerun[cuda]'`, or use {mention('device')} cpu"
        )
    if device == "cuda" and not cuda_starts():
        raise _cuda_did_not_start()
    return device


def _cuda_did_not_start() -> OptionError:
    return OptionError(
        "device", "cuda: the CUDA provider could not start (the CUDA and cuDNN libraries it needs were not "
        f"found); install them with `pip install 'stylerun[cuda]'`, or use {mention('device')} cpu"
    )


@functools.cache
def cuda_starts() -> bool:
    """Whether a session on the CUDA provider starts here, tried once per process on a one-op model.

    onnxruntime-gpu lists the CUDA provider whether or not a GPU and its libraries are there, and
    only a session tells; `--device cuda` asks this before any image is read.
    """
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    try:
        session = _quiet_session(model.SerializeToString(), ort.SessionOptions(), [CUDA, CPU])
    except Exception:  # onnxruntime raises its own types; any failure to start is "does not start"
        return False
    return session.get_providers()[0] == CUDA


def create_session(
    path: Path, device: str = "auto", threads: int | None = None, settings: SessionSettings = MEASURED,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """A session on `device`; `auto` takes CUDA when it works here and falls back quietly.

    A model onnxruntime refuses (unknown op, invalid graph, external data it may not read)
    raises `ModelError` naming the file and onnxruntime's reason.
    """
    check_device(device)
    providers = [CUDA, CPU] if device != "cpu" and CUDA in ort.get_available_providers() else [CPU]
    options = session_options(threads, settings, profile_prefix)
    try:
        session = _quiet_session(str(path), options, providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile/... types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"onnxruntime cannot load model {path}: {reason}") from None
    release_free_memory()  # loading and optimizing the graph leaves ~190 MiB of freed heap at 512 px
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise _cuda_did_not_start()
    return session


def _quiet_session(model: str | bytes, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """A session, without the fallback notice (stdout) and log lines (stderr) onnxruntime prints when the
    CUDA libraries are missing; the provider actually in use is reported instead."""
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return ort.InferenceSession(model, options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc, already loaded in this process
    except (OSError, AttributeError, TypeError):  # not glibc, or no dlopen(NULL) (Windows)
        return None


def release_free_memory() -> None:
    """Hand memory that was freed back to the operating system (glibc only; elsewhere a no-op).

    Session creation and the targets pass free a few hundred MiB that glibc keeps mapped;
    trimming after each lowers a 512 px run's peak RSS by ~110 MiB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _device_of(session: ort.InferenceSession) -> tuple[str, int]:
    return ("cuda", 0) if session.get_providers()[0] == CUDA else ("cpu", 0)


class LossModel:
    """Both exported models behind one object: targets once, then loss-and-gradient calls."""

    OUTPUTS = (LOSS, CONTENT_LOSS, STYLE_LOSS, GRAD)

    def __init__(
        self, files: ModelFiles, device: str = "auto", threads: int | None = None,
        settings: SessionSettings = MEASURED, profile_prefix: str | None = None,
    ):
        self.files = files
        self.layers = files.layers
        # profile_prefix: onnxruntime's profiler on the loss session (tools/bench.py --profile)
        self.session = create_session(files.loss, device, threads, settings, profile_prefix)
        # The targets session is needed only before `bind`: made on first use, dropped by
        # `bind` so its weights and buffers do not stay resident through the optimization.
        self._targets_args = (files.targets, device, threads, settings)
        self._targets_session: ort.InferenceSession | None = None
        self.device = _device_of(self.session)
        self._binding = self.session.io_binding()
        self._resident: dict[str, ort.OrtValue] = {}
        #: Asked while an evaluation runs; True cuts it short with `EvaluationStopped` (`StyleLoss.stop_with`).
        self.stop: Callable[[], bool] | None = None
        self._run_options = ort.RunOptions()

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def targets_session(self) -> ort.InferenceSession:
        if self._targets_session is None:
            self._targets_session = create_session(*self._targets_args)
        return self._targets_session

    def targets(self, image: np.ndarray, guide: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Content features and style Gram matrices of an (H, W, 3) RGB 0..255 image.

        Guided models also take `guide`, the (R, H, W) masks under which each region's Gram is taken.
        """
        names = [o.name for o in self.targets_session.get_outputs()]
        feeds = {IMAGE: np.ascontiguousarray(image, dtype=np.float32)}
        if guide is not None:
            feeds[STYLE_GUIDE] = np.ascontiguousarray(guide, dtype=np.float32)
        values = self.targets_session.run(names, feeds)
        # Copies: the arrays onnxruntime returns live in the session's arena and would keep
        # all of it (~140 MiB at 512 px) resident after the targets session is dropped.
        return {name: np.array(value, copy=True) for name, value in zip(names, values, strict=True)}

    def bind(
        self, targets: dict[str, np.ndarray], content_weights, style_weights, alpha: float, beta: float,
        tv_weight: float = 0.0,
    ) -> None:
        """Put everything that stays fixed during optimization on the device, once."""
        fixed = {
            **targets,
            CONTENT_WEIGHTS: np.asarray(content_weights, dtype=np.float32),
            STYLE_WEIGHTS: np.asarray(style_weights, dtype=np.float32),
            ALPHA: np.asarray(alpha, dtype=np.float32),
            BETA: np.asarray(beta, dtype=np.float32),
            TV_WEIGHT: np.asarray(tv_weight, dtype=np.float32),
        }
        wanted = {i.name for i in self.session.get_inputs()} - {IMAGE}
        missing = wanted - set(fixed)
        if missing:
            raise ModelError(f"model {self.files.loss} needs inputs that were not given: {sorted(missing)}")
        self._targets_session = None
        kind, index = self.device
        self._binding.clear_binding_inputs()
        self._resident = {}
        for name in wanted:
            value = ort.OrtValue.ortvalue_from_numpy(np.array(fixed[name], dtype=np.float32, order="C"), kind, index)
            self._resident[name] = value  # keep alive: the binding does not own it
            self._binding.bind_ortvalue_input(name, value)
        self._binding.clear_binding_outputs()
        for name in self.OUTPUTS:
            self._binding.bind_output(name, "cpu")
        release_free_memory()

    def terms(self, image: np.ndarray) -> tuple[float, float]:
        """(content loss, style loss) at an (H, W, 3) image (one graph computes them with the gradient)."""
        _, content, style, _ = self.loss_and_grad(image)
        return content, style

    def loss_and_grad(self, image: np.ndarray) -> tuple[float, float, float, np.ndarray]:
        """(loss, content_loss, style_loss, d loss / d image) at an (H, W, 3) float32 image."""
        image = np.ascontiguousarray(image, dtype=np.float32)
        self._binding.bind_cpu_input(IMAGE, image)
        if self.stop is None:
            self.session.run_with_iobinding(self._binding)
        else:
            self._run_stoppable(self.stop)
        loss, content, style, grad = self._binding.copy_outputs_to_cpu()
        return float(loss), float(content), float(style), grad

    def _run_stoppable(self, stop: Callable[[], bool], every: float = 0.05) -> None:
        """The evaluation, with `stop` asked every `every` s on another thread while onnxruntime
        computes (it releases the GIL); a yes sets the run's terminate flag, which onnxruntime
        checks between nodes. A 4 MP evaluation takes over a minute on a CPU: too long to wait for."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(every):
                if stop():
                    self._run_options.terminate = True
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            self.session.run_with_iobinding(self._binding, self._run_options)
        except Exception:
            if self._run_options.terminate:
                raise EvaluationStopped from None
            raise
        finally:
            done.set()
            watcher.join()
            self._run_options.terminate = False  # the next evaluation runs in full (a late yes came after this one)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_memory() -> int | None:
    """Bytes of memory this process may use: the machine's, or its container's limit if lower (None if unknown)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


class ModelCache:
    """Loss sessions kept across the jobs of one worker, the most recent `size` of them.

    Creating a session for the default layers costs about 0.5 s (its targets session
    another 0.2 s, made again per job); jobs that share the model files, device and threads
    reuse the session and only rebind their targets. A job's loss object is valid until the
    next job with the same key rebinds the session.
    """

    def __init__(self, size: int = 2):
        self.size, self.created, self.reused = size, 0, 0
        self.models: OrderedDict[tuple, LossModel] = OrderedDict()

    def __call__(self, files: ModelFiles, device: str = "auto", threads: int | None = None,
                 settings: SessionSettings = MEASURED) -> LossModel:
        key = (files, device, threads, settings)
        model = self.models.pop(key, None)
        if model is None:
            model = LossModel(files, device, threads, settings)
            self.created += 1
        else:
            self.reused += 1
            model.stop = None  # the last job's stop (a cancelled job's says yes for good) is not this one's
        self.models[key] = model
        while len(self.models) > self.size:
            self.models.popitem(last=False)
        return model
