"""Importer: NVIDIA-style persistent-class pickles load without running their code, into exact networks."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from ect import importer
from ect.checkpoint import load_checkpoint, network_from_checkpoint
from ect.importer import (
    CheckpointImportError,
    RefusedPickleError,
    SourceUnavailableError,
    cache_path_for,
    import_checkpoint,
)
from ect.networks import build_network
from ect.networks.edm2 import MPConv, MPFourier

BENIGN_SRC = "import torch\n\nclass Placeholder:\n    pass\n"


# ---------------------------------------------------------------------------------------------------------
# Writing pickles the way NVIDIA's torch_utils.persistence does.


@pytest.fixture
def nvidia_modules(monkeypatch):
    """Fake ``torch_utils.persistence`` and ``dnnlib.util`` so pickles reference them by name, as NVIDIA's do.

    The fake ``_reconstruct_persistent_obj`` runs the embedded source first, as the real one does: a tripwire
    in case anything ever unpickles these files with plain ``pickle``.
    """
    torch_utils, persistence = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dnnlib, util = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})
        raise AssertionError("embedded module source was executed")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    torch_utils.persistence, dnnlib.util = persistence, util
    for name, mod in [("torch_utils", torch_utils), ("torch_utils.persistence", persistence), ("dnnlib", dnnlib),
                      ("dnnlib.util", util)]:  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


class FakeLoss:
    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, np.float64(1.2), 0.5


class FakeAugment:
    def __init__(self):
        self.p, self.xflip, self.scale = 0.12, 1e8, np.arange(3.0)


class NvidiaPickler(pickle.Pickler):
    """Pickles our modules (and the fake loss/augment objects) as persistent classes with embedded source."""

    def __init__(self, f, reconstruct, names=None, module_src=BENIGN_SRC, protocol=None):
        super().__init__(f, protocol=protocol)
        self.reconstruct, self.names, self.module_src = reconstruct, names or {}, module_src

    def reducer_override(self, obj):
        cls = type(obj)
        ours = isinstance(obj, torch.nn.Module) and cls.__module__.startswith("ect.networks")
        if not ours and cls not in (FakeLoss, FakeAugment):
            return NotImplemented
        state = dict(obj.__getstate__() if isinstance(obj, torch.nn.Module) else obj.__dict__)
        # Like EDM: init kwargs with numpy scalars (init_attn weight sqrt(0.2)) next to the module state.
        state["_init_args"] = ()
        state["_init_kwargs"] = {"init_attn": {"init_mode": "xavier_uniform", "init_weight": np.sqrt(0.2)}}
        meta = {"type": "class", "version": 6, "module_src": self.module_src,
                "class_name": self.names.get(cls, cls.__name__), "state": state}  # fmt: skip
        return self.reconstruct, (meta,), None


def write_pickle(path: Path, payload, fakes, names=None, module_src=BENIGN_SRC, protocol=None) -> Path:
    with open(path, "wb") as f:
        NvidiaPickler(f, fakes.reconstruct, names, module_src, protocol).dump(payload)
    return path


def edm_like_network(seed: int = 0) -> torch.nn.Module:
    """A tiny SongUNet with EDM's augmentation-label input (augment_dim 9), with non-trivial weights."""
    torch.manual_seed(seed)
    net = build_network("tiny-s", augment_dim=9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def edm2_like_network(seed: int = 0) -> torch.nn.Module:
    """A tiny EDM2 Precond with EDM2's log-variance head added and non-zero gains."""
    torch.manual_seed(seed)
    net = build_network("edm2-tiny")
    net.logvar_fourier = MPFourier(128)
    net.logvar_linear = MPConv(128, 1, kernel=[])
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 0:  # out_gain / emb_gain start at 0
                p.fill_(0.7 if "out_gain" in name else 0.3)
    return net.eval()


def edm_payload(net):
    return {"ema": net, "loss_fn": FakeLoss(), "augment_pipe": FakeAugment(),
            "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "xflip": False}}  # fmt: skip


def edm2_payload(net, fakes):
    # EDM2 snapshots: a dnnlib.EasyDict, the ema network cast to float16.
    kwargs = fakes.EasyDict(class_name="training.dataset.ImageFolderDataset", path="img64.zip")
    return fakes.EasyDict(encoder=FakeAugment(), dataset_kwargs=kwargs, loss_fn=FakeLoss(), ema=net.to(torch.float16))


EDM_NAMES = {type(edm_like_network()): "VPPrecond"}


def _inputs(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    n, res, ch = 3, net.img_resolution, net.img_channels
    x = torch.randn(n, ch, res, res, generator=g)
    sigma = torch.tensor([0.01, 0.7, 40.0])
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 9]) % net.label_dim, net.label_dim).float()
    return x, sigma, labels


# ---------------------------------------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_edm_songunet_import_is_exact(tmp_path, nvidia_modules, protocol):
    source = edm_like_network()
    pkl = write_pickle(tmp_path / "edm.pkl", edm_payload(source), nvidia_modules, EDM_NAMES, protocol=protocol)
    out = tmp_path / "ckpt.pt"
    result = import_checkpoint(str(pkl), out, preset="tiny-s", cache_dir=tmp_path / "cache")

    assert result["source"]["dropped_keys"] == ["model.map_augment.weight"]
    assert result["source"]["url_or_path"] == str(pkl.resolve())
    assert result["source"]["sha256"] == importer.sha256_file(pkl)
    data = load_checkpoint(out, kind="diffusion")
    assert data["network"] == {"preset": "tiny-s", "overrides": {}}
    assert data["progress"] == {"iteration": 0, "images": 0, "flops": 0.0}
    assert data["config"] == {} and data["source"] == result["source"]
    src_sd = source.state_dict()
    assert set(data["ema"]) == set(src_sd) - {"model.map_augment.weight"}
    assert all(torch.equal(v, src_sd[k]) for k, v in data["ema"].items())
    assert all(torch.equal(v, data["ema"][k]) for k, v in data["net"].items())

    imported = network_from_checkpoint(data)
    direct = build_network("tiny-s")
    direct.load_state_dict({k: v for k, v in src_sd.items() if "map_augment" not in k}, strict=True)
    direct.eval()
    x, sigma, _ = _inputs(imported)
    with torch.no_grad():
        y = imported(x, sigma)
        assert torch.equal(y, direct(x, sigma))
        assert torch.equal(y, source(x, sigma))  # no augmentation labels: map_augment unused


def test_edm2_import_is_exact_and_drops_logvar(tmp_path, nvidia_modules):
    source = edm2_like_network()
    pkl = write_pickle(tmp_path / "edm2.pkl", edm2_payload(source, nvidia_modules), nvidia_modules)
    out = tmp_path / "ckpt.pt"
    result = import_checkpoint(str(pkl), out, cache_dir=tmp_path / "cache")  # preset inferred from shapes

    assert result["network"]["preset"] == "edm2-tiny"
    assert result["source"]["dropped_keys"] == [
        "logvar_fourier.freqs", "logvar_fourier.phases", "logvar_linear.weight"
    ]  # fmt: skip
    data = load_checkpoint(out, kind="diffusion")
    src_sd = {k: v for k, v in source.state_dict().items() if not k.startswith("logvar")}
    assert all(k.startswith("unet.") for k in data["ema"])
    assert all(v.dtype == torch.float32 for v in data["ema"].values())  # EDM2 stores float16
    assert all(torch.equal(v, src_sd[k].float()) for k, v in data["ema"].items())

    imported = network_from_checkpoint(data)
    direct = build_network("edm2-tiny")
    direct.load_state_dict(src_sd, strict=True)  # float16 -> float32 copy
    direct.eval()
    x, sigma, labels = _inputs(imported)
    with torch.no_grad():
        y = imported(x, sigma, labels)
        assert torch.equal(y, direct(x, sigma, labels))
    assert not torch.allclose(y, build_network("edm2-tiny").eval()(x, sigma, labels))


def test_bare_backbone_pickle_gets_wrapper_prefix(tmp_path, nvidia_modules):
    source = edm2_like_network()
    pkl = write_pickle(tmp_path / "unet.pkl", source.unet, nvidia_modules)
    result = import_checkpoint(str(pkl), tmp_path / "ckpt.pt", preset="edm2-tiny")
    assert result["source"]["dropped_keys"] == []
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in result["ema"].items())


def test_preset_inference_and_mismatch_errors(tmp_path, nvidia_modules):
    pkl = write_pickle(tmp_path / "edm.pkl", edm_payload(edm_like_network()), nvidia_modules, EDM_NAMES)
    assert import_checkpoint(str(pkl), tmp_path / "a.pt")["network"]["preset"] == "tiny-s"
    with pytest.raises(
        CheckpointImportError, match=r"shape mismatches .*map_layer0.weight: \(32, 8\) vs ours \(48, 12\)"
    ):
        import_checkpoint(str(pkl), tmp_path / "b.pt", preset="tiny-m")
    with pytest.raises(CheckpointImportError, match="missing from the source"):
        import_checkpoint(str(pkl), tmp_path / "c.pt", preset="edm2-tiny")
    assert not (tmp_path / "b.pt").exists() and not (tmp_path / "c.pt").exists()


# ---------------------------------------------------------------------------------------------------------
# Malicious pickles.


class _SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


class _EvilStorage:
    def __init__(self, inner: bytes):
        self.inner = inner

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.inner,)


class _Persistent:
    """An object pickled exactly like a persistent class instance, with any metadata."""

    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def _writes(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')\n"


def test_embedded_module_source_is_never_executed(tmp_path, nvidia_modules):
    marker = tmp_path / "pwned.txt"
    empty = {"_parameters": {}, "_buffers": {}, "_modules": {}}
    meta = {"type": "class", "version": 6, "module_src": _writes(marker), "class_name": "Pwned", "state": empty}
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"ema": _Persistent(nvidia_modules.reconstruct, meta)}))
    with pytest.raises(RefusedPickleError, match="refused persistent class 'Pwned'"):
        import_checkpoint(str(pkl), tmp_path / "out.pt", preset="edm2-tiny")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()

    # The same source inside a genuine-looking network: the weights import, the source stays inert text.
    net = edm2_like_network()
    evil_src = write_pickle(tmp_path / "net.pkl", {"ema": net}, nvidia_modules, module_src=_writes(marker))
    import_checkpoint(str(evil_src), tmp_path / "ok.pt", preset="edm2-tiny")
    assert not marker.exists()
    assert (tmp_path / "ok.pt").is_file()


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda m: _SystemCall(f"touch {m}"), f"{os.system.__module__}.system"),
        (lambda m: _Exec(_writes(m)), "builtins.exec"),
        (lambda m: _EvilStorage(pickle.dumps(_SystemCall(f"touch {m}"))), "torch.storage._load_from_bytes"),
    ],
    ids=["os.system", "exec", "nested-storage"],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_reduce_payloads_are_refused(tmp_path, nvidia_modules, make, refused):
    marker = tmp_path / "pwned.txt"
    payload = edm_payload(edm_like_network())
    payload["loss_fn"] = make(marker)
    pkl = write_pickle(tmp_path / "evil.pkl", payload, nvidia_modules, EDM_NAMES)
    with pytest.raises(RefusedPickleError) as info:
        import_checkpoint(str(pkl), tmp_path / "out.pt", preset="tiny-s")
    assert refused in str(info.value)
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_torch_zip_files_are_not_unpickled(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"ema": {}}, path)
    with pytest.raises(CheckpointImportError, match="torch zip archive"):
        import_checkpoint(str(path), tmp_path / "out.pt", preset="tiny-s")


# ---------------------------------------------------------------------------------------------------------
# Sources: local paths, downloads, cache, offline errors. No test reaches the network.


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("network disabled in tests")


def test_missing_local_file(tmp_path):
    missing = tmp_path / "nope.pkl"
    with pytest.raises(SourceUnavailableError, match="checkpoint file not found") as info:
        import_checkpoint(str(missing), tmp_path / "out.pt")
    assert str(missing) in str(info.value)


def test_offline_official_source_names_url_and_expected_path(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    url = importer.OFFICIAL_SOURCES["edm2-img64-s"].url
    expected = cache_path_for(url, tmp_path / "cache")
    with pytest.raises(SourceUnavailableError) as info:
        import_checkpoint("edm2-img64-s", tmp_path / "out.pt", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert url in message and str(expected) in message
    assert expected.name == "edm2-img64-s-1073741-0.075.pkl"
    assert not expected.exists() and list(expected.parent.iterdir()) == []  # no partial download left


def test_unreachable_file_url(tmp_path):
    url = "file:///nonexistent-ect-test-dir/edm-cifar10-32x32-uncond-vp.pkl"
    with pytest.raises(SourceUnavailableError) as info:
        import_checkpoint(url, tmp_path / "out.pt", cache_dir=tmp_path / "cache")
    assert url in str(info.value) and str(cache_path_for(url, tmp_path / "cache")) in str(info.value)


def test_download_cache_trust_on_first_use(tmp_path, nvidia_modules, monkeypatch):
    pkl = write_pickle(tmp_path / "edm2.pkl", {"ema": edm2_like_network()}, nvidia_modules)
    url = pkl.resolve().as_uri()
    cache = tmp_path / "cache"
    first = import_checkpoint(url, tmp_path / "a.pt", cache_dir=cache)
    cached = cache_path_for(url, cache)
    sidecar = cached.with_name(cached.name + ".sha256")
    assert cached.read_bytes() == pkl.read_bytes()
    assert sidecar.read_text().split()[0] == first["source"]["sha256"] == importer.sha256_file(pkl)
    assert first["source"]["url_or_path"] == url

    monkeypatch.setattr(urllib.request, "urlopen", _no_network)  # the cache answers now
    second = import_checkpoint(url, tmp_path / "b.pt", cache_dir=cache)
    assert second["source"]["sha256"] == first["source"]["sha256"]

    cached.write_bytes(cached.read_bytes() + b"tampered")
    with pytest.raises(CheckpointImportError, match="the file changed"):
        import_checkpoint(url, tmp_path / "c.pt", cache_dir=cache)


def test_official_table():
    table = importer.OFFICIAL_SOURCES
    assert table["edm-cifar10-32x32-uncond-vp"].url.endswith("/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl")
    assert table["edm-cifar10-32x32-uncond-vp"].preset == "ddpmpp-cifar10"
    for size, file in [("s", "s-1073741-0.075"), ("m", "m-2147483-0.060"), ("l", "l-1073741-0.040"),
                       ("xl", "xl-0671088-0.040")]:  # fmt: skip
        entry = table[f"edm2-img64-{size}"]
        assert entry.url == f"https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img64-{file}.pkl"
        assert entry.preset == f"edm2-img64-{size}"


def test_cli_import(tmp_path, nvidia_modules, capsys):
    pkl = write_pickle(tmp_path / "edm2.pkl", {"ema": edm2_like_network()}, nvidia_modules)
    from ect import cli

    parser = argparse.ArgumentParser(prog="ect")
    cli.add_import_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import", "--source", str(pkl), "--out", str(tmp_path / "x.pt"), "--preset", "edm2-tiny"])
    assert cli.run_import(args) == 0
    assert "dropped (unused by ECT): logvar_fourier.freqs" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "x.pt")["network"]["preset"] == "edm2-tiny"

    # the real entry point reports import errors without a traceback

    assert cli.main(["import", "--source", str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "y.pt")]) != 0
    assert "checkpoint file not found" in capsys.readouterr().err


def test_imported_checkpoint_records_its_dataset_for_evaluate(tmp_path, nvidia_modules, capsys):
    from ect import cli

    pkl = write_pickle(tmp_path / "edm.pkl", edm_payload(edm_like_network()), nvidia_modules, EDM_NAMES)
    bare, digits = tmp_path / "bare.pt", tmp_path / "digits.pt"
    assert cli.main(["import", "--source", str(pkl), "--preset", "tiny-s", "--out", str(bare)]) == 0
    assert "no dataset recorded" in capsys.readouterr().out
    assert load_checkpoint(bare)["config"] == {}
    evaluate = ["evaluate", "--sampler", "1step", "--metric", "fd_digits", "--num", "8", "--no-progress"]
    assert cli.main([*evaluate, "--checkpoint", str(bare), "--out", str(tmp_path / "bare.json")]) == 2
    assert "ect import --dataset" in capsys.readouterr().err

    assert cli.main(["import", "--source", str(pkl), "--preset", "tiny-s", "--dataset", "mnist",
                     "--out", str(digits)]) == 2  # fmt: skip
    assert "unknown dataset 'mnist'" in capsys.readouterr().err and not digits.exists()
    assert cli.main(["import", "--source", str(pkl), "--preset", "tiny-s", "--dataset", "digits",
                     "--out", str(digits)]) == 0  # fmt: skip
    assert load_checkpoint(digits)["config"] == {"data": {"name": "digits", "data_dir": None}}
    assert cli.main([*evaluate, "--checkpoint", str(digits), "--out", str(tmp_path / "m.json")]) == 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert (record["dataset"], record["iteration"], record["nfe"]) == ("digits", 0, 1)
    assert record["value"] > record["real_data"] > 0  # random weights: far from real digits


    # One sampler rule for `ect sample` and `ect evaluate`: the same one-line error, before any sampling.
    errors = []
    for command in (["sample", "--num", "4", "--out", str(tmp_path / "s.png")],
                    [*evaluate[:1], "--metric", "fd_digits", "--out", str(tmp_path / "e.json")]):
        assert cli.main([*command, "--checkpoint", str(digits), "--sampler", "2step"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        errors.append(err.split(": error: ", 1)[1])
    assert errors[0] == errors[1] == "--sampler 2step does not apply to a diffusion checkpoint; use heun or 1step\n"
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "e.json").exists()


def test_official_sources_record_their_dataset():
    table = importer.OFFICIAL_SOURCES
    assert table["edm-cifar10-32x32-uncond-vp"].dataset == "cifar10"
    assert {table[f"edm2-img64-{size}"].dataset for size in ("s", "m", "l", "xl")} == {"imagenet64"}


def test_restricted_unpickler_reads_plain_tensors():
    t = torch.arange(12, dtype=torch.float16).reshape(3, 4)[1:]
    blob = pickle.dumps({"t": t, "p": torch.nn.Parameter(torch.ones(2)), "n": np.float32(2.5), "s": {1, 2}})
    out = importer.RestrictedUnpickler(io.BytesIO(blob)).load()
    assert torch.equal(out["t"], t) and out["t"].dtype == torch.float16
    assert type(out["p"]) is torch.Tensor and torch.equal(out["p"], torch.ones(2))
    assert out["n"] == np.float32(2.5) and out["s"] == {1, 2}


def test_known_checksums_are_checked(tmp_path, nvidia_modules, monkeypatch):
    pkl = write_pickle(tmp_path / "edm2.pkl", {"ema": edm2_like_network()}, nvidia_modules)
    url = pkl.resolve().as_uri()
    entry = importer.OfficialSource(url=url, preset="edm2-tiny", dataset="digits", sha256="0" * 64)
    monkeypatch.setitem(importer.OFFICIAL_SOURCES, "fake-published", entry)
    with pytest.raises(CheckpointImportError, match="does not match the published"):
        import_checkpoint("fake-published", tmp_path / "a.pt", cache_dir=tmp_path / "c1")
    assert not (tmp_path / "a.pt").exists()

    entry = importer.OfficialSource(url=url, preset="edm2-tiny", dataset="digits", reported_sha256="0" * 64)
    monkeypatch.setitem(importer.OFFICIAL_SOURCES, "fake-reported", entry)
    with pytest.warns(UserWarning, match="third-party-reported"):
        result = import_checkpoint("fake-reported", tmp_path / "b.pt", cache_dir=tmp_path / "c2")
    assert result["network"]["preset"] == "edm2-tiny" and result["source"]["url_or_path"] == url


# ---------------------------------------------------------------------------------------------------------
# Paper-scale presets: the same round trip at full size.


def _full_size(preset: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network(preset)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim:
                p.add_(torch.randn_like(p) * 0.02)
            else:  # EDM2's scalar gains start at 0
                p.fill_(0.5)
    return net.eval()


@pytest.mark.slow
def test_ddpmpp_cifar10_import_is_exact(tmp_path, nvidia_modules):
    source = _full_size("ddpmpp-cifar10")
    pkl = write_pickle(tmp_path / "edm.pkl", edm_payload(source), nvidia_modules, EDM_NAMES)
    data = import_checkpoint(str(pkl), tmp_path / "ckpt.pt", cache_dir=tmp_path / "cache")
    assert data["network"]["preset"] == "ddpmpp-cifar10"
    imported = network_from_checkpoint(load_checkpoint(tmp_path / "ckpt.pt"))
    x, sigma, _ = _inputs(imported)
    with torch.no_grad():
        assert torch.equal(imported(x, sigma), source(x, sigma))


@pytest.mark.slow
def test_edm2_s_import_is_exact(tmp_path, nvidia_modules):
    source = _full_size("edm2-img64-s")
    source.logvar_fourier = MPFourier(128)
    source.logvar_linear = MPConv(128, 1, kernel=[])
    pkl = write_pickle(tmp_path / "edm2.pkl", edm2_payload(source, nvidia_modules), nvidia_modules)
    data = import_checkpoint(str(pkl), tmp_path / "ckpt.pt", cache_dir=tmp_path / "cache")
    assert data["network"]["preset"] == "edm2-img64-s"
    imported = network_from_checkpoint(load_checkpoint(tmp_path / "ckpt.pt"))
    source = source.float()  # the pickle held float16 weights (as EDM2's); compare at those values
    del source.logvar_fourier, source.logvar_linear
    x, sigma, labels = _inputs(imported)
    with torch.no_grad():
        assert torch.equal(imported(x[:1], sigma[:1], labels[:1]), source(x[:1], sigma[:1], labels[:1]))
