"""Run-time choices that change no weights: attention kernel, fp32 norms, checkpointing,
channels_last and torch.compile, each checked against the plain eager computation."""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import idmzoo
from idmzoo.blocks.layers import ThresholdDropout
from idmzoo.blocks.norm import GroupNorm32
from idmzoo.reference import spec_from_reference
from tests.fixtures import TINY, TINY_ADM, TINY_CM, load_fixture

TINY_ENCODER = {
    **TINY,
    "family": {"type": "encoder_unet"},
    "image_size": 8,
    "out_channels": 5,
    "pool": {"type": "attention", "num_head_channels": 16},
}
TINY_SUPERRES = {**TINY_ADM, "family": {"type": "superres_unet"}}


class OpRecorder(TorchDispatchMode):
    """Records every aten call (function, arguments, outputs) made while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, list[torch.Tensor]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.calls.append((func, args, [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]))
        return out


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: zero-initialised output convs would hide differences."""
    torch.manual_seed(seed)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return model


def inputs(spec: dict, batch: int = 2, size: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    args = {
        "x": torch.randn(batch, spec["in_channels"], size, size, generator=generator),
        "timesteps": torch.tensor([3.0, 517.0][:batch]),
    }
    if spec.get("num_classes"):
        args["y"] = torch.arange(batch) % spec["num_classes"]
    if spec.get("family") == {"type": "superres_unet"}:
        args["low_res"] = torch.randn(batch, spec["in_channels"], size // 2, size // 2, generator=generator)
    return args


def gradients(
    model: torch.nn.Module, args: dict[str, torch.Tensor], seed: int = 0
) -> dict[str, torch.Tensor]:
    """The input's and every parameter's gradient of a fixed loss, with dropout seeded."""
    model.zero_grad(set_to_none=True)
    x = args["x"].clone().requires_grad_(True)
    torch.manual_seed(seed)
    model(**{**args, "x": x}).square().mean().backward()
    return {"x": x.grad, **{name: p.grad for name, p in model.named_parameters()}}


def assert_all_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=0, msg=name)


# Attention backend -------------------------------------------------------------------


def test_attention_backend_is_sdpa_by_default_and_restored_after_the_context():
    assert idmzoo.get_attention_backend() == "sdpa"
    with idmzoo.attention_backend("math"):
        assert idmzoo.get_attention_backend() == "math"
        with pytest.raises(RuntimeError, match="boom"), idmzoo.attention_backend("sdpa"):
            raise RuntimeError("boom")
        assert idmzoo.get_attention_backend() == "math"
    assert idmzoo.get_attention_backend() == "sdpa"


def test_unknown_attention_backend_is_refused():
    with pytest.raises(ValueError, match="attention backend must be one of sdpa, math, but got 'flash'"):
        idmzoo.set_attention_backend("flash")  # type: ignore[arg-type]
    assert idmzoo.get_attention_backend() == "sdpa"


@pytest.mark.parametrize(
    "spec", [TINY, TINY_ADM, TINY_CM, TINY_ENCODER], ids=["idm", "adm", "cm", "attention_pool"]
)
def test_sdpa_and_math_give_the_same_outputs_and_gradients(spec):
    model = randomised(idmzoo.build(spec)).eval()  # eval: no dropout, so both passes match
    args = inputs(spec)
    with idmzoo.attention_backend("math"):
        expected = gradients(model, args)
        expected_out = model(**args)
    got, out = gradients(model, args), model(**args)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=0)
    assert_all_close(got, expected, atol=1e-5)


def attention_matrices(spec: dict, size: int) -> list[torch.Size]:
    """Shapes of every [..., T, T] tensor a training step creates, T being an attention's token count."""
    model = randomised(idmzoo.build(spec))
    tokens = {(size // 2) ** 2, (size // 2) ** 2 + 1}  # attention at ds 2; the pool adds its mean token
    with OpRecorder() as recorder:
        gradients(model, inputs(spec, size=size))
    return [
        t.shape
        for _, _, outs in recorder.calls
        for t in outs
        if t.dim() >= 2 and t.shape[-1] == t.shape[-2] and t.shape[-1] in tokens
    ]


@pytest.mark.parametrize(
    "spec", [TINY, TINY_CM, TINY_ENCODER], ids=["attention_block", "conv2d_attention", "attention_pool"]
)
def test_sdpa_never_materialises_the_token_by_token_matrix(spec):
    """Attention memory grows linearly with tokens: no [T, T] weights, forward or backward."""
    spec = {**spec, "image_size": 12}  # 36 tokens: no channel count equals it
    with idmzoo.attention_backend("math"):
        assert attention_matrices(spec, 12)  # the check sees the reference's weights...
    assert attention_matrices(spec, 12) == []  # ...and SDPA has none


# Norm --------------------------------------------------------------------------------


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "bf16_autocast"])
def test_group_norm_of_float32_input_makes_no_copy(autocast):
    norm = randomised(GroupNorm32(64, num_groups=32, eps=1e-5))
    x = torch.randn(2, 64, 8, 8)
    with OpRecorder() as recorder, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = norm(x)
    calls = [(func, args) for func, args, _ in recorder.calls if func.__name__ != "detach.default"]
    assert [func.__name__ for func, _ in calls] == ["native_group_norm.default"]  # no copy, no cast
    _, args = calls[0]
    assert args[0] is x and args[1] is norm.weight and args[2] is norm.bias
    assert out.dtype == torch.float32
    assert torch.equal(out, F.group_norm(x, 32, norm.weight, norm.bias))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_group_norm_under_autocast_computes_in_float32(dtype):
    """A low-precision activation (as autocast's convs produce) is normalised in float32."""
    norm = randomised(GroupNorm32(64, num_groups=32, eps=1e-5))
    x = (torch.randn(2, 64, 8, 8) * 50 + 300).to(dtype)  # large mean: low-precision statistics drift
    with torch.autocast("cpu", dtype=dtype):
        out = norm(x)
    assert out.dtype == dtype
    assert torch.equal(out, F.group_norm(x.float(), 32, norm.weight, norm.bias).to(dtype))


# Dropout -----------------------------------------------------------------------------


def test_threshold_dropout_is_inverted_dropout_with_a_boolean_mask():
    dropout = ThresholdDropout(p=0.3)
    x = torch.ones(400, 1000, requires_grad=True)
    saved: list[torch.Tensor] = []
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = dropout(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 4 * (0.7 * 0.3 / x.numel()) ** 0.5  # Bernoulli(0.7)
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert [t.dtype for t in saved] == [torch.bool]  # 1 byte per element kept for backward
    out.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.7)
    dropout.eval()
    assert dropout(x) is x


# Gradient checkpointing ------------------------------------------------------------


def forward_counts(model: torch.nn.Module, args: dict[str, torch.Tensor]) -> Counter:
    """How many times blocks of each kind started their forward in one training step.

    A pre-hook, because a recomputation stops as soon as it has rebuilt what the backward
    pass needs (checkpoint's early stop), before forward hooks would run.
    """
    counts: Counter = Counter()
    handles = [
        module.register_forward_pre_hook(lambda *_, kind=module.idmzoo_kind: counts.update([kind]))
        for module in model.modules()
        # nested (norm, activation) and model-wide (embeddings) blocks are never checkpointed alone
        if getattr(module, "idmzoo_kind", None)
        not in (None, "norm", "activation", "time_embed", "label_embed")
    ]
    gradients(model, args)
    for handle in handles:
        handle.remove()
    return counts


@pytest.mark.parametrize("spec", [TINY, TINY_ADM], ids=["idm", "adm"])
def test_checkpointing_recomputes_the_chosen_kinds_with_the_same_gradients(spec):
    model = randomised(idmzoo.build(spec))  # training mode: dropout must replay identically
    args = inputs(spec)
    once = forward_counts(model, args)
    assert set(once) == {"resblock", "attention", "upsample", "downsample"}
    expected = gradients(model, args)
    recomputed = {"none": set(), "attention": {"attention"}, "all": set(once), "selective": set(once)}
    mixed = {"resblock": "selective", "attention": "full", "downsample": "none"}
    for mode, kinds in [*recomputed.items(), (mixed, {"resblock", "attention"})]:
        model.set_checkpointing(mode)
        counts = forward_counts(model, args)
        assert counts == Counter({k: n * (2 if k in kinds else 1) for k, n in once.items()}), mode
        assert_all_close(gradients(model, args), expected, atol=1e-6)


def expensive_calls(model: torch.nn.Module, args: dict[str, torch.Tensor]) -> Counter:
    """How many times each of selective checkpointing's kept ops ran in one training step."""
    with OpRecorder() as recorder:
        gradients(model, args)
    return Counter(func for func, _, _ in recorder.calls if func in idmzoo.runtime.SAVED_OPS)


@pytest.mark.parametrize("spec", [TINY, TINY_ADM], ids=["idm", "adm"])
def test_selective_checkpointing_recomputes_no_convolution_matmul_attention_or_dropout_draw(spec):
    """The kept ops run once (their outputs are reused); full checkpointing runs them again."""
    model = randomised(idmzoo.build(spec))  # training mode, dropout 0.1
    args = inputs(spec)
    once = expensive_calls(model, args)
    assert {op.name() for op in once} >= {"aten::convolution", "aten::addmm", "idmzoo::dropout_keep_mask"}
    model.set_checkpointing("selective")
    assert expensive_calls(model, args) == once
    model.set_checkpointing("all")
    assert (
        expensive_calls(model, args)[torch.ops.aten.convolution.default]
        > once[torch.ops.aten.convolution.default]
    )


class OutputLifetimes(TorchDispatchMode):
    """Which of the expensive ops' outputs outlive the forward pass, by the weight each op used.

    Only weak references to the outputs' storages are kept, so recording changes no lifetime.
    """

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = {w.untyped_storage().data_ptr(): name for name, w in weights.items()}
        self.outputs: dict[str, list[weakref.ref]] = {name: [] for name in weights}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func in idmzoo.runtime.SAVED_OPS:
            for arg in args:
                name = isinstance(arg, torch.Tensor) and self.names.get(arg.untyped_storage().data_ptr())
                if name:
                    self.outputs[name].append(weakref.ref(out.untyped_storage()))
        return out

    def alive(self) -> dict[str, bool]:
        gc.collect()
        return {name: all(ref() is not None for ref in refs) for name, refs in self.outputs.items()}


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_selective_checkpointing_keeps_no_output_that_only_enters_a_residual_sum(backend):
    """A residual branch's last conv and attention's output projection are dropped; the rest kept."""
    model = randomised(idmzoo.build(TINY, checkpointing="selective"))
    blocks = [m for m in model.modules() if hasattr(m, "idmzoo_kind")]
    resblock = next(
        m for m in blocks if m.idmzoo_kind == "resblock" and isinstance(m.skip_connection, torch.nn.Conv2d)
    )
    attention = next(m for m in blocks if m.idmzoo_kind == "attention")
    weights = {
        "first conv": resblock.in_layers[-1].weight,
        "skip conv": resblock.skip_connection.weight,
        "last conv": resblock.out_layers[-1].weight,
        "qkv": attention.qkv.weight,
        "proj_out": attention.proj_out.weight,
    }
    args = inputs(TINY)
    with idmzoo.attention_backend(backend):
        with OutputLifetimes(weights) as lifetimes:
            loss = model(**args).square().mean()
        assert all(lifetimes.outputs.values())
        assert lifetimes.alive() == {
            "first conv": True,
            "skip conv": True,
            "last conv": False,
            "qkv": True,
            "proj_out": False,
        }
        loss.backward()  # the gradients equal "none"'s: see the tests above and below


def test_selective_checkpointing_of_a_reference_fixture_gives_the_gradients_of_none():
    """Dropout 0.3 and a fixed seed: the recomputed masks are the forward's, so gradients are equal."""
    fixture = load_fixture("idm_uncond_ssn")
    spec = spec_from_reference(fixture["library"], fixture["class"], {**fixture["kwargs"], "dropout": 0.3})
    model = idmzoo.build(spec)
    model.load_state_dict(fixture["state_dict"])
    args = {"x": fixture["inputs"]["x"], "timesteps": fixture["inputs"]["timesteps"]}
    expected = gradients(model, args, seed=3)
    model.set_checkpointing("selective")
    assert_all_close(gradients(model, args, seed=3), expected, atol=1e-6)
    assert not torch.equal(gradients(model, args, seed=4)["x"], expected["x"])  # dropout is on


def saved_bytes(model: torch.nn.Module, args: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps from the forward pass for the backward pass."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**args).square().mean()
    return total


def test_checkpointing_keeps_fewer_activations_for_backward():
    spec = {**TINY, "num_res_blocks": 2}
    args = inputs(spec, size=16)
    saved = {
        mode: saved_bytes(idmzoo.build(spec, checkpointing=mode), args)
        for mode in ("none", "attention", "all")
    }
    assert saved["all"] < saved["attention"] < saved["none"]
    assert saved["all"] < 0.5 * saved["none"]


def test_unknown_checkpointing_mode_is_refused():
    with pytest.raises(ValueError, match="checkpointing must be one of none, attention, all, selective or a"):
        idmzoo.build(TINY, checkpointing="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'norm' is not a kind that can be checkpointed"):
        idmzoo.build(TINY, checkpointing={"norm": "full"})
    with pytest.raises(ValueError, match=r"checkpointing\['resblock'\] must be one of none, full, selective"):
        idmzoo.build(TINY, checkpointing={"resblock": "all"})  # type: ignore[dict-item]


# channels_last -------------------------------------------------------------------------


def record_block_outputs(model: torch.nn.Module, seen: list[torch.Tensor]) -> list[Any]:
    """Hooks appending every block's output to ``seen``; returns their handles."""
    return [
        module.register_forward_hook(lambda _module, _args, out: seen.append(out))
        for module in model.modules()
        if hasattr(module, "idmzoo_kind")
    ]


@pytest.mark.parametrize(
    "spec",
    [TINY, TINY_ADM, TINY_CM, TINY_SUPERRES, TINY_ENCODER],
    ids=["idm", "adm", "cm", "superres", "encoder"],
)
def test_channels_last_runs_end_to_end(spec):
    model = randomised(idmzoo.build(spec)).eval()
    args = inputs(spec)
    expected, expected_grads = model(**args), gradients(model, args)
    model.to(memory_format=torch.channels_last)
    args["x"] = args["x"].contiguous(memory_format=torch.channels_last)
    seen: list[torch.Tensor] = []
    hooks = record_block_outputs(model, seen)
    out = model(**args)
    for hook in hooks:
        hook.remove()
    images = [t for t in seen if t.dim() == 4]
    assert images and all(t.is_contiguous(memory_format=torch.channels_last) for t in images)
    if out.dim() == 4:
        assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_all_close(gradients(model, args), expected_grads, atol=1e-5)


# torch.compile -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [TINY, TINY_ADM, TINY_CM, TINY_SUPERRES, TINY_ENCODER],
    ids=["idm", "adm", "cm", "superres", "encoder"],
)
@pytest.mark.parametrize("checkpointing", ["none", "all", "selective"])
def test_model_traces_as_one_graph(spec, checkpointing):
    """fullgraph=True raises on any graph break; the eager backend keeps this fast."""
    torch._dynamo.reset()
    model = randomised(idmzoo.build(spec, checkpointing=checkpointing))
    args = inputs(spec)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.manual_seed(0)
    out = compiled(**args)
    torch.manual_seed(0)
    torch.testing.assert_close(out, model(**args), atol=1e-5, rtol=0)
    out.square().mean().backward()


def test_compiled_model_keeps_the_input_checks():
    torch._dynamo.reset()
    model = randomised(idmzoo.build(TINY_ADM)).eval()
    args = inputs(TINY_ADM)
    compiled = torch.compile(model, backend="eager")
    compiled(**args)
    with pytest.raises(ValueError, match=r"a class-conditional model needs labels y of shape \[2\]"):
        compiled(args["x"], args["timesteps"])
    torch._dynamo.reset()
    fullgraph = torch.compile(model, fullgraph=True, backend="eager")  # no break, the message survives
    with pytest.raises(torch._dynamo.exc.Unsupported, match="a class-conditional model needs labels y"):
        fullgraph(args["x"], args["timesteps"])


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager():
    torch._dynamo.reset()
    model = randomised(idmzoo.build(TINY_ADM)).eval()
    args = inputs(TINY_ADM)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(**args)
        torch.testing.assert_close(compiled(**args), expected, atol=1e-4, rtol=0)


def test_compiled_model_follows_the_attention_backend():
    """The backend is a guarded global: switching it recompiles instead of reusing the SDPA graph."""
    torch._dynamo.reset()
    graphs: list[str] = []

    def record(graph: torch.fx.GraphModule, example_inputs: list) -> Any:
        graphs.append(graph.code)
        return graph.forward

    model = randomised(idmzoo.build(TINY)).eval()
    compiled = torch.compile(model, fullgraph=True, backend=record)
    args = inputs(TINY)
    with torch.no_grad():
        compiled(**args)
        compiled(**args)
        with idmzoo.attention_backend("math"):
            compiled(**args)
    assert len(graphs) == 2
    assert "scaled_dot_product_attention" in graphs[0] and "softmax" not in graphs[0]
    assert "softmax" in graphs[1] and "scaled_dot_product_attention" not in graphs[1]
