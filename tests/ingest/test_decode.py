import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from streamclust.ingest.decode import STATUSES, DecodeParams, decode_image

from .hostile import encode, exif_rotated, hostile_members, noise, png_bomb

PARAMS = DecodeParams(size=32, max_pixels=64_000_000, min_side=8, max_aspect=4.0, background=(255, 255, 255))


@pytest.mark.parametrize("name,data,expected", hostile_members(), ids=[m[0] for m in hostile_members()])
def test_each_hostile_member_gets_its_status(name, data, expected):
    out = decode_image(data, name, PARAMS)
    assert out.status == expected, out.reason
    if expected == "ok":
        assert out.pixels.shape == (32, 32, 3) and out.pixels.dtype == np.uint8
        assert out.reason == ""
    else:
        assert out.pixels is None
        assert out.reason  # every skip says why


def test_exif_orientation_is_applied():
    # 40x20 landscape, left half black; orientation 6 turns it into a 20x40 portrait whose
    # top half is black; the centre-crop keeps the middle 20x20, black on top.
    out = decode_image(exif_rotated(), "r.jpg", DecodeParams(20, 10**8, 1, 4.0, (255, 255, 255)))
    assert out.status == "ok"
    px = out.pixels.mean(axis=(1, 2))
    assert px[:8].mean() < 60 and px[-8:].mean() > 200


def test_transparent_pixels_are_composited_on_the_background():
    im = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    out = decode_image(encode(im, "PNG"), "t.png", DecodeParams(10, 10**8, 1, 4.0, (0, 128, 255)))
    assert out.status == "ok"
    assert np.all(out.pixels == np.array([0, 128, 255], np.uint8))


def test_16_bit_grey_is_scaled_not_clipped():
    arr = np.full((16, 16), 65535 // 2, np.uint16)
    out = decode_image(encode(Image.fromarray(arr), "PNG"), "g.png", DecodeParams(8, 10**8, 1, 4.0, (0, 0, 0)))
    assert out.status == "ok"
    assert abs(int(out.pixels.mean()) - 127) <= 1


def test_first_frame_of_an_animation():
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(data, "a.gif", DecodeParams(8, 10**8, 1, 4.0, (0, 0, 0)))
    assert out.status == "ok" and out.pixels[..., 0].mean() > 200 and out.pixels[..., 2].mean() < 50


def test_bomb_is_refused_from_the_header_alone():
    # a 10-gigapixel canvas would need 30 GB: the refusal must come before any allocation
    out = decode_image(png_bomb(100_000, 100_000), "b.png", PARAMS)
    assert out.status == "bomb" and "pixels" in out.reason
    small_cap = DecodeParams(32, 1_000, 1, 4.0, (0, 0, 0))
    out = decode_image(encode(noise(50, 50), "PNG"), "n.png", small_cap)
    assert out.status == "bomb" and "2,500" in out.reason


def test_large_jpeg_is_decoded_at_reduced_scale_to_the_right_size():
    data = encode(noise(1024, 768, 3), "JPEG")
    out = decode_image(data, "big.jpg", PARAMS)
    assert out.status == "ok" and (out.width, out.height) == (1024, 768)
    assert out.pixels.shape == (32, 32, 3)


def test_decoded_image_matches_a_plain_pillow_pipeline():
    im = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1)))
    out = decode_image(encode(im, "PNG"), "g.png", DecodeParams(24, 10**8, 1, 4.0, (0, 0, 0)))
    ref = np.asarray(im.convert("RGB").crop((8, 0, 56, 48)).resize((24, 24), Image.Resampling.LANCZOS))
    assert np.abs(out.pixels.astype(int) - ref.astype(int)).max() <= 2


_SEEDS = [encode(noise(24, 24, 11), fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    cuts=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
    trunc=st.one_of(st.none(), st.integers(0, 4000)),
)
def test_fuzz_mutated_images_always_get_a_status(seed, cuts, trunc):
    data = bytearray(seed)
    for pos, val in cuts:
        if data:
            data[pos % len(data)] = val
    if trunc is not None:
        data = data[:trunc]
    out = decode_image(bytes(data), "fuzz.bin", PARAMS)
    assert out.status in STATUSES
    assert (out.pixels is not None) == (out.status == "ok")
    if out.status != "ok":
        assert out.reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_always_get_a_status(data):
    out = decode_image(data, "x", PARAMS)
    assert out.status in STATUSES
    assert (out.pixels is not None) == (out.status == "ok")


@pytest.mark.parametrize("w,h,size", [(28, 28, 28), (40, 30, 16), (92, 112, 64), (300, 200, 32), (64, 64, 20)])
def test_grey_is_resized_as_grey_to_the_values_of_the_rgb_route(w, h, size):
    from streamclust.ingest.decode import resample_filter

    im = noise(w, h, 7, mode="L")
    out = decode_image(encode(im, "PNG"), "g.png", DecodeParams(size, 10**8, 1, 4.0, (0, 0, 0)))
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    ref = im.convert("RGB").resize((size, size), resample_filter(side, size), box=box, reducing_gap=2.0)
    np.testing.assert_array_equal(out.pixels, np.asarray(ref))


def test_a_batch_holds_the_pixels_decode_image_gives():
    from streamclust.ingest.batch import decode_batch
    from streamclust.ingest.readers import Member

    members = [Member(k, name, data) for k, (name, data, _) in enumerate(hostile_members())]
    batch = decode_batch(members, PARAMS)
    expected = [decode_image(m.data, m.name, PARAMS) for m in members]
    assert [r[2] for r in batch.rows] == [d.status for d in expected]
    ok = [d.pixels for d in expected if d.status == "ok"]
    assert batch.ok == [k for k, d in enumerate(expected) if d.status == "ok"]
    np.testing.assert_array_equal(batch.pixels, np.stack(ok))
