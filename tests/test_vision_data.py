"""transmodal-vision datasets: CIFAR from archives in the real format, corruptions, image folders, and
training end to end. Nothing is downloaded: the tests write small files in the exact on-disk formats."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("torchvision")
pytest.importorskip("transmodal_vision")

import numpy as np  # noqa: E402
import transmodal  # noqa: E402
from transmodal.config import parse_experiment, validate_components  # noqa: E402
from transmodal.errors import DataError  # noqa: E402
from transmodal.plugins import Plugins  # noqa: E402
from transmodal_vision import plugin as vision_plugin  # noqa: E402
from transmodal_vision.corruptions import CORRUPTION_NAMES, SEVERITIES, corrupt, disk_kernel  # noqa: E402

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"



@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-vision", vision_plugin)])


def _pixels(count: int, seed: int) -> np.ndarray:
    """Smooth random images, stored as CIFAR stores them: (N, 3072), channel by channel."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return (images * 255).to(torch.uint8).reshape(count, 3072).numpy()


def trust_archive(monkeypatch: pytest.MonkeyPatch, archive: Path) -> None:
    """Make ``archive``'s MD5 the one CIFAR-10's is checked against, as if it were the real archive."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch | None = None, per_batch: int = 10, test: int = 10,
                  extract: bool = False) -> Path:
    """A CIFAR-10 python-version archive: five training batches, a test batch and batches.meta, pickled
    dicts of a uint8 (N, 3072) array and a label list, as in cifar-10-python.tar.gz. With ``monkeypatch``, its
    checksum passes as the real archive's."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sizes = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test}
    for index, (name, size) in enumerate(sizes.items()):
        labels = [(index + i) % 10 for i in range(size)]
        batch = {"batch_label": name, "labels": labels, "data": _pixels(size, index),
                 "filenames": [f"image_{index}_{i}.png" for i in range(size)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    if extract:
        return folder
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    if monkeypatch is not None:
        trust_archive(monkeypatch, archive)
    return archive


def build(plugins: Plugins, name: str, **params):
    return plugins.get("dataset", name).build(0, **params)


# -- CIFAR ----------------------------------------------------------------------------------------------------


def test_cifar10_archive_is_extracted_and_loaded_in_memory(tmp_path, plugins, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    bundle = build(plugins, "cifar10", root=str(tmp_path), val_size=10)
    assert bundle.classes == CIFAR10_CLASSES
    assert bundle.modalities == {"image": "image"}
    train, val, test = bundle.train, bundle.evaluation["source/val"], bundle.evaluation["source/test"]
    assert (len(train), len(val), len(test)) == (40, 10, 10)
    assert train.data["image"].dtype == torch.uint8 and train.data["image"].shape[1:] == (3, 32, 32)
    assert bundle.unlabelled is None and "target/test" not in bundle.evaluation
    # Every image and label comes from the files: the splits together are the five training batches.
    stored = torch.from_numpy(np.concatenate([_pixels(10, i) for i in range(5)])).view(-1, 3, 32, 32)
    loaded = torch.cat([train.data["image"], val.data["image"]])
    assert sorted(map(bytes, loaded.flatten(1).numpy())) == sorted(map(bytes, stored.flatten(1).numpy()))
    # The reference layout is channel by channel: image 0 of batch 1 has its red plane first.
    first = torch.from_numpy(_pixels(10, 0)[0]).view(3, 32, 32)
    assert any(torch.equal(first, image) for image in loaded)


def test_cifar10_split_depends_on_its_seed_only(tmp_path, plugins, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    first = build(plugins, "cifar10", root=str(tmp_path), val_size=10, seed=1)
    again = plugins.get("dataset", "cifar10").build(99, root=str(tmp_path), val_size=10, seed=1)  # other training seed
    other = build(plugins, "cifar10", root=str(tmp_path), val_size=10, seed=2)
    assert torch.equal(first.evaluation["source/val"].data["image"], again.evaluation["source/val"].data["image"])
    assert not torch.equal(first.evaluation["source/val"].data["image"], other.evaluation["source/val"].data["image"])


def test_cifar10_sizes_cap_the_splits(tmp_path, plugins, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    bundle = build(plugins, "cifar10", root=str(tmp_path), val_size=5, train_size=7, test_size=4)
    assert len(bundle.train) == 7 and len(bundle.evaluation["source/test"]) == 4


def test_missing_data_says_where_it_is_expected_and_how_to_get_it(tmp_path, plugins):
    with pytest.raises(DataError) as error:
        build(plugins, "cifar10", root=str(tmp_path / "nowhere"), download=False)
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "cifar-10-python.tar.gz") in message
    assert "download: true" in message and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_cifar100_says_its_own_archive(tmp_path, plugins):
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        build(plugins, "cifar100", root=str(tmp_path))


def test_truncated_batch_names_the_file(tmp_path, plugins):
    folder = write_cifar10(tmp_path, extract=True)
    damaged = folder / "data_batch_3"
    damaged.write_bytes(damaged.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3 is damaged"):
        build(plugins, "cifar10", root=str(tmp_path), val_size=10)


def test_batch_with_wrong_contents_is_rejected(tmp_path, plugins):
    folder = write_cifar10(tmp_path, extract=True)
    batch = {"labels": [0, 1], "data": np.zeros((2, 1024), dtype=np.uint8)}  # one channel, not three
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch .*uint8 array \(N, 3072\)"):
        build(plugins, "cifar10", root=str(tmp_path), val_size=10)


def test_pickle_that_would_run_code_is_refused(tmp_path, plugins):
    folder = write_cifar10(tmp_path, extract=True)
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match="test_batch is damaged"):
        build(plugins, "cifar10", root=str(tmp_path), val_size=10)
    assert not marker.exists()


def test_damaged_archive_gives_a_clear_error(tmp_path, plugins, monkeypatch):
    archive = write_cifar10(tmp_path)
    archive.write_bytes(archive.read_bytes()[:200])
    trust_archive(monkeypatch, archive)  # damaged after its checksum was taken (a bad disk): extraction fails
    with pytest.raises(DataError, match="cannot be extracted"):
        build(plugins, "cifar10", root=str(tmp_path))


def test_corrupted_target_domain(tmp_path, plugins, monkeypatch):
    write_cifar10(tmp_path, monkeypatch, test=20)
    corruption = {"name": "gaussian_noise", "severity": 5, "unlabelled_fraction": 0.5}
    bundle = build(plugins, "cifar10", root=str(tmp_path), val_size=10, corruption=corruption)
    unlabelled, target = bundle.unlabelled, bundle.evaluation["target/test"]
    assert not unlabelled.has_labels and len(unlabelled) == 10 and len(target) == 10
    clean = bundle.evaluation["source/test"].data["image"]  # the same test images, in the same order
    assert not torch.equal(target.data["image"], clean[10:])
    assert torch.equal(corrupt(clean, "gaussian_noise", 5, seed=0)[10:], target.data["image"])
    assert torch.equal(target.data["label"], bundle.evaluation["source/test"].data["label"][10:])


# -- corruptions ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.from_numpy(_pixels(16, 42)).view(-1, 3, 32, 32)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_corruption_changes_images_more_at_higher_severity(images, name):
    change = []
    for severity in range(1, 6):
        corrupted = corrupt(images, name, severity, seed=3)
        assert corrupted.dtype == torch.uint8 and corrupted.shape == images.shape
        assert torch.equal(corrupted, corrupt(images, name, severity, seed=3))  # deterministic
        change.append((corrupted.float() - images.float()).abs().mean().item())
    assert change[0] > 0
    assert change == sorted(change) and change[-1] > change[0]


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_noise_follows_the_seed(images, name):
    assert not torch.equal(corrupt(images, name, 3, seed=0), corrupt(images, name, 3, seed=1))


def test_corruptions_follow_the_published_definitions(images):
    x = images.double() / 255
    # contrast: towards each image's per-channel mean by c; brightness: HSV value + c, hue and saturation kept.
    c = SEVERITIES["contrast"][2]
    mean = x.mean(dim=(2, 3), keepdim=True)
    expected = (((x - mean) * c + mean).clamp(0, 1) * 255).to(torch.uint8)
    assert (corrupt(images, "contrast", 3).int() - expected.int()).abs().max() <= 1
    bright = corrupt(images, "brightness", 5).double() / 255
    value = bright.amax(dim=1)
    assert torch.allclose(value, (x.amax(dim=1) + SEVERITIES["brightness"][4]).clamp(max=1), atol=1 / 255 + 1e-9)
    # impulse noise sets about c of all values to 0 or 1 and leaves the rest.
    noisy = corrupt(images, "impulse_noise", 5)
    changed = noisy != images
    assert torch.all((noisy[changed] == 0) | (noisy[changed] == 255))
    assert abs(changed.float().mean().item() - SEVERITIES["impulse_noise"][4]) < 0.01
    # defocus blur: the disk kernel sums to one, is symmetric, and grows with the radius.
    kernels = [disk_kernel(*c) for c in SEVERITIES["defocus_blur"]]
    assert all(torch.isclose(k.sum(), torch.tensor(1.0, dtype=k.dtype)) and torch.allclose(k, k.T) for k in kernels)
    assert kernels[-1].shape[0] > kernels[0].shape[0]


def test_blurs_match_scipy_filters(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images.double().numpy() / 255
    for severity in (1, 5):
        sigma = SEVERITIES["gaussian_blur"][severity - 1]
        reference = np.stack([ndimage.gaussian_filter(i, sigma=(0, sigma, sigma), mode="nearest", truncate=4.0)
                              for i in x])
        ours = corrupt(images, "gaussian_blur", severity).numpy().astype(int)
        assert np.abs(ours - (np.clip(reference, 0, 1) * 255).astype(np.uint8)).max() <= 1
        kernel = disk_kernel(*SEVERITIES["defocus_blur"][severity - 1]).numpy()
        reference = np.stack([[ndimage.correlate(c, kernel, mode="mirror") for c in i] for i in x])
        ours = corrupt(images, "defocus_blur", severity).numpy().astype(int)
        assert np.abs(ours - (np.clip(reference, 0, 1) * 255).astype(np.uint8)).max() <= 1


def test_corruption_names_in_config_are_the_implemented_ones():
    assert set(CORRUPTION_NAMES) == set(SEVERITIES)
    assert {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "contrast", "brightness",
            "jpeg_compression"} <= set(CORRUPTION_NAMES)


# -- image folders --------------------------------------------------------------------------------------------


def _write_images(root: Path, classes: dict[str, int], colour_of: dict[str, int]) -> None:
    from torchvision.io import encode_jpeg, encode_png

    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            image = torch.zeros(3, 40, 60, dtype=torch.uint8)
            image[colour_of[name]] = 200
            if index % 2:
                (root / name / f"{index}.png").write_bytes(encode_png(image).numpy().tobytes())
            else:
                (root / name / f"{index}.jpg").write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())
    (root / next(iter(classes)) / "notes.txt").write_text("not an image")


def test_image_folder_with_target_domain(tmp_path, plugins):
    colour = {"cats": 0, "dogs": 1, "fish": 2}
    _write_images(tmp_path / "photos", {"cats": 6, "dogs": 6, "fish": 8}, colour)
    _write_images(tmp_path / "sketches", {"cats": 4, "dogs": 4}, colour)
    bundle = build(plugins, "image-folder", root=str(tmp_path / "photos"), target_root=str(tmp_path / "sketches"),
                   image_size=24, val_fraction=0.2, test_fraction=0.1, target_test_fraction=0.5)
    assert bundle.classes == ["cats", "dogs", "fish"]
    sizes = {name: len(split) for name, split in bundle.evaluation.items()}
    assert sizes == {"source/val": 4, "source/test": 2, "target/test": 4} and len(bundle.train) == 14
    assert len(bundle.unlabelled) == 4 and not bundle.unlabelled.has_labels
    images, labels = bundle.train.data["image"], bundle.train.data["label"]
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 24, 24)
    # Each image decodes to its class's colour, so the labels match the folders.
    assert torch.equal(images.float().mean(dim=(2, 3)).argmax(dim=1), labels)


def test_image_folder_errors(tmp_path, plugins):
    with pytest.raises(DataError, match="is not a folder"):
        build(plugins, "image-folder", root=str(tmp_path / "missing"))
    _write_images(tmp_path / "photos", {"cats": 3, "dogs": 3}, {"cats": 0, "dogs": 1})
    (tmp_path / "photos" / "dogs" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*2\.jpg"):
        build(plugins, "image-folder", root=str(tmp_path / "photos"))
    _write_images(tmp_path / "other", {"birds": 2}, {"birds": 2})
    (tmp_path / "photos" / "dogs" / "2.jpg").unlink()
    with pytest.raises(DataError, match="birds are not among the source classes"):
        build(plugins, "image-folder", root=str(tmp_path / "photos"), target_root=str(tmp_path / "other"))


# -- training end to end --------------------------------------------------------------------------------------


def _experiment(tmp_path: Path, dataset: dict, encoder: dict, adaptation: list[dict]) -> transmodal.Experiment:
    return parse_experiment({
        "name": "vision-smoke",
        "data": {"dataset": {"name": "cifar10", "root": str(tmp_path), **dataset},
                 "augment": {"crop_padding": 4, "hflip": True}},
        "model": {"encoders": {"image": encoder}, "fusion": {"name": "concat"}},
        "adaptation": adaptation,
        "optimizer": {"name": "sgd", "lr": 0.01},
        "trainer": {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "device": "cpu", "num_threads": 1},
        "output": {"dir": str(tmp_path / "runs")},
    })


def test_resnet18_trains_on_cifar10_end_to_end(tmp_path, plugins, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    experiment = _experiment(tmp_path, {"val_size": 10}, {"name": "resnet18", "cifar_stem": True},
                             [{"name": "finetune"}])
    summary, run_dir = transmodal.train(experiment, quiet=True, plugins=plugins)
    assert summary["steps"] == 2  # 40 training images, batches of 16, the last partial one dropped
    assert set(summary["final"]) == {"source/val", "source/test"}
    assert 0.0 <= summary["final"]["source/test"]["accuracy"] <= 1.0
    weights = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert weights["encoders.image.conv1.weight"].shape == (64, 3, 3, 3)  # the CIFAR stem was trained and saved
    metrics, _ = transmodal.evaluate_run(run_dir, plugins=plugins)
    assert metrics["source/test"]["accuracy"] == pytest.approx(summary["best"]["source/test"]["accuracy"])


def test_dann_adapts_to_a_corrupted_target(tmp_path, plugins, monkeypatch):
    write_cifar10(tmp_path, monkeypatch, test=20)
    experiment = _experiment(
        tmp_path, {"val_size": 10, "corruption": {"name": "contrast", "severity": 5}},
        {"name": "resnet18"}, [{"name": "dann", "hidden": 32}],
    )
    summary, _ = transmodal.train(experiment, quiet=True, plugins=plugins)
    assert set(summary["final"]) == {"source/val", "source/test", "target/test"}
    assert "oracle" in summary  # target labels exist, and the run says which numbers used them


# -- example configs ------------------------------------------------------------------------------------------

VISION_EXAMPLES = ["cifar10_resnet18_finetune.yaml", "cifar10_resnet18_linear_probe.yaml",
                   "cifar10_to_cifar10c_dann.yaml"]


@pytest.mark.parametrize("name", VISION_EXAMPLES)
def test_examples_validate_and_explain_missing_data(name, tmp_path, plugins):
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    assert raw["data"]["dataset"]["download"] is True  # runs as written on a machine with network
    raw["data"]["dataset"].update(download=False, root=str(tmp_path / "data"))
    experiment = parse_experiment(raw, name)
    validate_components(experiment, plugins)  # weights names, corruption, every component's parameters
    with pytest.raises(DataError, match="Set download: true"):
        transmodal.assemble(experiment, plugins)
