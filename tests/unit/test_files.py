"""Files as the toolkit writes and reads them: modes that follow the umask, images of every PNG flavour."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_png16
from transferdet.data.images import load_rgb, to_rgb
from transferdet.errors import ConfigError, DataError
from transferdet.utils.io import atomic_dir, atomic_path, check_replaceable, resolved, write_text_atomic


def test_artefacts_get_the_modes_the_umask_gives_not_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import transferdet.utils.io as io

        importlib.reload(io)  # the umask is read when the module loads
        io.write_text_atomic(tmp_path / "a.txt", "x")
        with io.atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
        with io.atomic_path(tmp_path / "model.bin") as tmp:
            tmp.write_bytes(b"z")
    finally:
        os.umask(old)
        importlib.reload(io)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_failed_write_leaves_nothing_and_the_old_file_stays(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert (tmp_path / "a.txt").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.txt"]
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("half")
        raise RuntimeError("crash")
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_only_an_own_folder_may_be_replaced(tmp_path):
    check_replaceable(tmp_path / "absent", "k", lambda f: False, "x")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "k", lambda f: False, "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.tex").write_text("years")
    check_replaceable(tmp_path / "full", "k", lambda f: True, "x")
    with pytest.raises(ConfigError, match="config key 'k'.*is left untouched"):
        check_replaceable(tmp_path / "full", "k", lambda f: False, "x")


def test_a_symlink_loop_is_a_config_error(tmp_path):
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(ConfigError, match="config key 'dataset.root'.*symbolic-link loop"):
        resolved(tmp_path / "loop" / "x", "dataset.root")


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_16_bit_pngs_are_scaled_not_clipped(tmp_path, rgb):
    value = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16)
    write_png16(tmp_path / "x.png", np.stack([value] * 3, -1) if rgb else value)
    image = load_rgb(tmp_path / "x.png")
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[0, :, 0].tolist() == [0, 64, 128, 255]  # (8-bit would read 0, 255, 255, 255 clipped)


@pytest.mark.parametrize(
    "mode, suffix",
    [(m, ".png") for m in ("RGB", "L", "LA", "RGBA", "P", "1", "I;16")] + [(m, ".jpg") for m in ("RGB", "L", "CMYK")],
)
def test_every_pil_mode_decodes_to_the_pixels_of_pils_rgb_conversion(tmp_path, mode, suffix):
    """Whichever decoder takes a file (torchvision for 8-bit PNG and JPEG, PIL for the rest), the pixels are
    PIL's own RGB conversion of it: training, evaluation and inference see the same image."""
    noise = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(noise).convert(mode).save(path, **({"quality": 90} if suffix == ".jpg" else {}))
    image = load_rgb(path)
    assert image.shape == (37, 53, 3) and image.dtype == np.uint8
    with Image.open(path) as im:
        np.testing.assert_array_equal(image, to_rgb(im))


def test_a_truncated_png_is_a_data_error_naming_it(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png: cannot decode image"):
        load_rgb(tmp_path / "cut.png")


def test_a_decompression_bomb_is_refused_by_name(tmp_path):
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    with pytest.raises(DataError, match="bomb.png: refused"):
        load_rgb(tmp_path / "bomb.png")
