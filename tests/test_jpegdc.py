"""The black-frame check from JPEG DC coefficients (robolake/jpegdc.py) against
libjpeg-turbo's 1/8-scale decode (`jpeg_levels`, the full path the cleaned layer used for
every frame): the same black flag and size for every frame, decided early exactly where a
visible bright block lies within the budget, and never a crash on hostile bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from robolake import jpegdc
from robolake.decode import BLACK_MAX_LEVEL, _CameraColumns, jpeg_levels
from robolake.jpegdc import BlackCheck
from robolake.simulate.camera import Camera, jpeg
from robolake.simulate.motion import Trajectory
from robolake.simulate.robots import profile_of

BUDGET = 16
SAMPLING = {"444": (1, 1), "422": (2, 1), "420": (2, 2), "440": (1, 2), "411": (4, 1),
            "Gray": None}
# shared: header tables are built once; no bytes budget (tested on its own)
CHECK = BlackCheck(BLACK_MAX_LEVEL, BUDGET, budget_bytes=1 << 30)


def encode(pixels: np.ndarray, sampling: str, quality: int) -> bytes:
    if sampling == "Gray":
        return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels[..., :1]), quality,
                                      colorspace="GRAY",
                                      colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(pixels, quality, colorsubsampling=sampling)


def pil(pixels: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **options)
    return buf.getvalue()


def exact(frame: bytes) -> tuple[int, int, bool, np.ndarray]:
    width, height, levels = jpeg_levels(frame)
    return width, height, bool(levels.max() <= BLACK_MAX_LEVEL), levels


def early_answer(levels: np.ndarray, mcu_blocks: tuple[int, int] | None):
    """What the walker must answer, from the full decode's block levels: "not black" when a
    visible luma block brighter than the threshold lies in the first BUDGET MCUs (scan
    order; grey scans are not interleaved: one block per MCU), "black" when the whole scan
    is within the budget and has none, else nothing."""
    h, v = mcu_blocks or (1, 1)
    rows, cols = np.nonzero(levels.reshape(levels.shape[:2]) > BLACK_MAX_LEVEL)
    mcus_x, mcus_y = -(-levels.shape[1] // h), -(-levels.shape[0] // v)
    if rows.size:
        return False if int(((rows // v) * mcus_x + cols // h).min()) < BUDGET else None
    return True if mcus_x * mcus_y <= BUDGET else None


def walked(frame: bytes) -> tuple[tuple[int, int, bool] | None, tuple[int, int, bool]]:
    """(the walker's answer once the frame's header is admitted, the cleaned layer's
    (width, height, is_black) for the frame with brightness off)."""
    columns = _CameraColumns(brightness=False)
    columns.check = CHECK
    for _ in range(2):  # the first frame of a header admits it
        columns.add_jpeg("/cam", 0, 0, frame)
    cols = columns.columns()
    assert (cols["brightness"] == np.array([None, None])).all()  # null unless asked
    return CHECK.decide(frame), (int(cols["width"][1]), int(cols["height"][1]),
                                 bool(cols["is_black"][1]))


def assert_same(frame: bytes, mcu_blocks: tuple[int, int] | None, walkable: bool = True):
    width, height, black, levels = exact(frame)
    answer, ours = walked(frame)
    assert ours == (width, height, black)
    walkable = walkable and (width > 4 or height > 4)  # (see the tiny frames' test)
    early = early_answer(levels, mcu_blocks) if walkable else None
    assert answer == (None if early is None else (width, height, early)), black
    assert CHECK.disagreed == 0  # no header was banned by the self-check on admission
    return answer


def dark_with_block(width: int, height: int, bx: int, by: int, dark: int, bright: int):
    pixels = np.full((height, width, 3), dark, dtype=np.uint8)
    pixels[8 * by: 8 * by + 8, 8 * bx: 8 * bx + 8] = bright
    return pixels


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.tuples(st.integers(1, 150), st.integers(1, 90)),
       sampling=st.sampled_from(sorted(SAMPLING)), quality=st.integers(5, 100),
       where=st.tuples(st.floats(0, 1), st.floats(0, 1)), dark=st.integers(0, 14),
       bright=st.integers(0, 255))
def test_one_bright_block_anywhere_same_flag_as_the_full_decode(size, sampling, quality, where,
                                                              dark, bright):
    width, height = size
    bx, by = int(where[0] * ((width - 1) // 8)), int(where[1] * ((height - 1) // 8))
    frame = encode(dark_with_block(width, height, bx, by, dark, bright), sampling, quality)
    assert_same(frame, SAMPLING[sampling])


def test_tiny_frames_where_the_decode_is_not_at_one_eighth():
    """`jpeg_levels` asks simplejpeg for at least max(1, size // 8): for a frame of at most
    4x4 pixels a larger scale (1/4 ... 1/1) also gives 1x1 and is the one decoded, so its
    level is an IDCT sample, not the DC mean: those frames are left to the full decode."""
    yy, xx = np.mgrid[0:8, 0:8]
    for width in range(1, 7):
        for height in range(1, 7):
            for base in range(8, 24, 3):
                grad = np.clip(base + 6 * xx - 6 * yy, 0, 255).astype(np.uint8)[:height, :width]
                frame = encode(np.repeat(grad[..., None], 3, axis=2), "444", 90)
                assert (assert_same(frame, (1, 1)) is None) == (width <= 4 and height <= 4)


def test_first_and_last_block_and_the_budget():
    """A bright block in the first MCU, in the last one the budget reaches, one MCU beyond
    it (the full decode finds it) and at the far corner of an HD frame."""
    for bx, decided in ((0, True), (BUDGET - 1, True), (BUDGET, False)):
        frame = encode(dark_with_block(8 * 24, 16, bx, 0, 3, 200), "444", 90)
        assert (assert_same(frame, (1, 1)) is not None) == decided
    hd = dark_with_block(1280, 720, 159, 89, 2, 230)
    width, height, black, _ = exact(encode(hd, "420", 85))
    assert (width, height, black) == (1280, 720, False)
    assert assert_same(encode(hd, "420", 85), (2, 2)) is None  # beyond the budget
    assert assert_same(encode(np.zeros((720, 1280, 3), np.uint8), "420", 85), (2, 2)) is None


@pytest.mark.parametrize("sampling", ["420", "422", "411", "440"])
def test_a_bright_block_in_the_mcu_padding_does_not_count(sampling):
    """Luma blocks right of ceil(width / 8) (or below ceil(height / 8)) are coded in the last
    MCU but not output: narrowing the frame header's width over a bright block there makes
    the frame black for libjpeg-turbo, and for the walker."""
    h, v = SAMPLING[sampling]
    width, height = 16 * h, 8 * v * 2
    if h > 1:  # MCUs of one block column have no padding on the right
        frame = encode(dark_with_block(width, height, 2 * h - 1, 0, 4, 250), sampling, 90)
        at = 5 + frame.index(b"\xff\xc0")  # SOF0 + 5: height, then width
        for narrow, black in ((width - 8, True), (width - 7, False)):
            patched = frame[:at + 2] + narrow.to_bytes(2, "big") + frame[at + 4:]
            assert exact(patched)[:3] == (narrow, height, black)
            assert_same(patched, (h, v))
    if v > 1:
        frame = encode(dark_with_block(width, height, 0, 2 * v - 1, 4, 250), sampling, 90)
        at = 5 + frame.index(b"\xff\xc0")
        for low, black in ((height - 8, True), (height - 7, False)):
            patched = frame[:at] + low.to_bytes(2, "big") + frame[at + 2:]
            assert exact(patched)[:3] == (width, low, black)
            assert_same(patched, (h, v))


def test_levels_at_the_threshold_and_dense_blocks():
    """Uniform frames at levels around the threshold for every quality (the 1x1 IDCT's
    rounding and the strict >), and blocks whose 63rd coefficient is coded (no EOB):
    noise at quality 100 before the first bright block."""
    for quality in range(1, 101):
        for grey in range(12, 22):
            for sampling in ("420", "Gray"):
                frame = encode(np.full((8, 8, 3), grey, np.uint8), sampling, quality)
                assert_same(frame, SAMPLING[sampling])
    rng = np.random.default_rng(3)
    for sampling in ("444", "420", "Gray"):
        noise = rng.integers(0, 17, (48, 64, 3)).astype(np.uint8)
        noise[:8, 56:] = 240  # block 7 of the first row: after seven dense ones
        frame = encode(noise, sampling, 100)
        assert assert_same(frame, SAMPLING[sampling]) is not None
        # the default bytes budget (256, or 1/128 of the data) stops before it
        default = BlackCheck(BLACK_MAX_LEVEL, BUDGET)
        default.confirm(frame, *exact(frame)[:3])
        assert default.decide(frame) is None and default.disagreed == 0


def test_simulator_frames_day_night_and_black():
    rng = np.random.default_rng(5)
    for size in ((64, 48), (100, 37), (1280, 720)):
        camera = Camera(rng, Trajectory(rng, profile_of("delivery"), 60.0), size)
        for pixels in camera.pixels(np.linspace(0, 60, 8 if size[0] < 1000 else 1)):
            assert assert_same(jpeg(pixels), (2, 2)) is not None  # day: the sky decides
            assert_same(jpeg(pixels // 24), (2, 2))  # night: near the threshold
            assert_same(jpeg(np.zeros_like(pixels)), (2, 2))
    # the walker's lookup tables are built once per process and their size is reported
    # (benchmarks/align.py's memory bound): a DC and an AC table per component, kilobytes
    assert 4_096 < jpegdc.shared_tables_bytes() < 8 << 20


def test_other_encoders_and_what_the_walker_leaves_to_the_full_decode():
    rng = np.random.default_rng(9)
    pixels = np.clip(rng.normal(120, 40, (40, 60, 3)), 0, 255).astype(np.uint8)
    for options in ({"quality": 85}, {"optimize": True}, {"subsampling": 0, "quality": 95}):
        assert assert_same(pil(pixels, **options), (1, 1) if options.get("subsampling") == 0
                           else (2, 2)) is not None
    for options in ({"progressive": True}, {"restart_marker_blocks": 2}):  # not walked
        assert_same(pil(pixels, **options), (2, 2), walkable=False)
    cmyk = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(cmyk, "JPEG")
    assert_same(cmyk.getvalue(), None, walkable=False)  # four components: not walked
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 50  # bright in R, black in libjpeg's RGB -> grey (0.299 R)
    rgb = pil(red, keep_rgb=True, subsampling=0)  # Adobe transform 0: stored as RGB
    assert exact(rgb)[2] is True
    assert_same(rgb, None, walkable=False)
    by_ids = rgb[:2] + rgb[18:]  # without the Adobe segment: RGB by the component ids
    assert by_ids[2:4] == b"\xff\xdb" and exact(by_ids)[2] is True
    assert_same(by_ids, None, walkable=False)
    assert_same(pil(pixels[..., 0]), None)  # PIL's greyscale JPEG


def _reference() -> bytes:
    rng = np.random.default_rng(2)
    camera = Camera(rng, Trajectory(rng, profile_of("delivery"), 60.0), (64, 48))
    return jpeg(camera.pixels(np.array([1.0]))[0])


REFERENCE = _reference()


def _today(frame: bytes):
    try:
        return exact(frame)[:3]
    except ValueError as exc:
        return type(exc)


def _ours(frame: bytes):
    columns = _CameraColumns(brightness=False)
    columns.check = CHECK
    try:
        columns.add_jpeg("/cam", 0, 0, frame)
    except ValueError as exc:
        return type(exc)
    cols = columns.columns()
    return int(cols["width"][0]), int(cols["height"][0]), bool(cols["is_black"][0])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["truncate", "flip", "insert", "random", "marker"]),
       at=st.floats(0, 1), data=st.binary(min_size=1, max_size=40))
def test_hostile_bytes_never_crash_the_walker_and_get_todays_verdict(kind, at, data):
    """Today's verdict (size and flag, or the decode's ValueError) for damaged frames. The
    one difference, documented: bits damaged in the entropy-coded data after the block that
    decided "not black" are not seen (the full decode rejects the frame)."""
    walked(REFERENCE)  # its header is admitted
    frame, pos = REFERENCE, int(at * (len(REFERENCE) - 1))
    if kind == "truncate":
        frame = frame[:pos]
    elif kind == "flip":
        frame = frame[:pos] + bytes([frame[pos] ^ data[0] or 1]) + frame[pos + 1:]
    elif kind == "insert":
        frame = frame[:pos] + data + frame[pos:]
    elif kind == "random":
        frame = data
    else:
        frame = frame[:pos] + b"\xff" + bytes([0xC0 + data[0] % 64]) + frame[pos:]
    answer = CHECK.decide(frame)  # never raises
    told, width, height = CHECK.bright_first_blocks(frame, np.array([0]), np.array([len(frame)]))
    if told[0]:  # the first blocks checked together: only where the walker says the same
        assert answer == (width[0], height[0], False), kind
    today, ours = _today(frame), _ours(frame)
    if ours != today:
        scan = REFERENCE.index(b"\xff\xda")
        assert today is ValueError and answer == ours, kind
        assert kind in ("flip", "insert", "marker") and pos >= scan + 14, kind


def _block_of(frames: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The frames one after another, as a chunk holds them (with bytes between them)."""
    gap = b"\xff\xd9\x00" * 7
    data = gap + gap.join(frames) + gap
    starts = np.cumsum([len(gap)] + [len(f) + len(gap) for f in frames[:-1]])
    return data, starts, starts + np.array([len(f) for f in frames])


def test_first_blocks_checked_together_tell_only_what_the_walker_tells():
    """`bright_first_blocks` over many frames (day and night frames of three sizes, black
    ones, noisy ones whose first bytes hold stuffed zeros, and every kind of damage at every
    position of the first 200 entropy-coded bytes): a frame it tells is one the walker
    tells "not black" with the same size, and it tells most daylight frames."""
    rng = np.random.default_rng(11)
    day, other = [], []
    for size in ((64, 48), (100, 37), (320, 240)):
        camera = Camera(rng, Trajectory(rng, profile_of("delivery"), 60.0), size)
        for pixels in camera.pixels(np.linspace(0, 60, 12)):
            day.append(jpeg(pixels))
            other += [jpeg(pixels // 24), jpeg(np.zeros_like(pixels))]
    noisy = [encode(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8), "444", q)
             for q in range(50, 101, 5)]  # long first blocks: some past the window
    scan = REFERENCE.index(b"\xff\xda") + 14
    damaged = []
    for pos in range(scan, scan + 200):
        damaged += [REFERENCE[:pos] + bytes([REFERENCE[pos] ^ 0x10]) + REFERENCE[pos + 1:],
                    REFERENCE[:pos] + b"\xff\xd0" + REFERENCE[pos:],
                    REFERENCE[:pos] + b"\xff" + REFERENCE[pos:],
                    REFERENCE[:pos] + b"\xff\xd9"]
    frames = day + other + noisy + damaged
    check = BlackCheck(BLACK_MAX_LEVEL, BUDGET, budget_bytes=1 << 30)
    for frame in frames:  # every header admitted (where the full decode accepts the frame)
        if check.decide(frame) is None and _today(frame) is not ValueError:
            check.confirm(frame, *exact(frame)[:3])
    told, width, height = check.bright_first_blocks(*_block_of(frames))
    for i in np.flatnonzero(told):
        assert check.decide(frames[i]) == (width[i], height[i], False), i
    assert told[:len(day)].mean() > 0.9
    assert not told[len(day):len(day) + len(other)].any()  # night and black: not bright
    stuffed = [b"\xff\x00" in f[f.index(b"\xff\xda") + 14:][:48] for f in day]
    assert sum(stuffed) >= 3 and told[:len(day)][stuffed].all()  # stuffed zeros removed


def test_a_block_of_frames_equals_the_frames_one_by_one(monkeypatch):
    """`_CameraColumns.add_jpegs` (a chunk's frames held and checked together, the rest
    walked or decoded) against `add_jpeg` frame by frame, from a fresh check (the first
    frame admits the header in the middle of the block), across several held batches and
    headers, with a damaged frame among them: the same columns, and the same error."""
    rng = np.random.default_rng(12)
    camera = Camera(rng, Trajectory(rng, profile_of("delivery"), 60.0), (64, 48))
    frames = [jpeg(p) for p in camera.pixels(np.linspace(0, 60, 60))]
    frames[10] = jpeg(np.zeros((48, 64, 3), np.uint8))
    frames[20:20] = [pil(np.full((40, 60, 3), 90, np.uint8), quality=70)]  # another header
    monkeypatch.setattr(_CameraColumns, "PENDING_BYTES", 20_000)
    one, block = _CameraColumns(brightness=False), _CameraColumns(brightness=False)
    for i, frame in enumerate(frames):
        one.add_jpeg("/cam", i, i + 1, frame)
    data, starts, ends = _block_of(frames)
    topics = np.array(["/cam"] * len(frames), dtype=object)
    for half in (slice(0, 33), slice(33, None)):
        block.add_jpegs(topics[half], np.arange(len(frames))[half],
                        np.arange(len(frames))[half] + 1, data, starts[half], ends[half])
    a, b = one.columns(), block.columns()
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    assert b["is_black"].sum() == 1 and block.check.admissions == 2
    damaged = frames[5][:frames[5].index(b"\xff\xda") + 19] + b"\xff\xd9"  # in block 1
    block.add_jpegs(topics[:1], np.zeros(1, np.int64), np.zeros(1, np.int64), damaged,
                    np.array([0]), np.array([len(damaged)]))
    with pytest.raises(ValueError):
        block.columns()


def test_damage_the_walker_reads_is_the_full_decodes_to_judge():
    """Truncation, a marker or fill bytes inside the bytes the walker reads, and a scan that
    ends (at the EOI) before the deciding block is complete: today's ValueError, not an
    early answer."""
    noisy = np.random.default_rng(4).integers(150, 256, (16, 16, 3)).astype(np.uint8)
    frame = encode(noisy, "444", 100)
    start = frame.index(b"\xff\xda") + 14
    assert walked(frame)[0] == (16, 16, False)  # admitted and decided on the first block
    damaged = [frame[:n] for n in (len(frame) - 1, len(frame) - 2, start + 30, start)]
    damaged += [frame[:start + n] + b"\xff\xd9" for n in (1, 2, 5, 9)]
    damaged += [frame[:start + 4] + insert + frame[start + 4:]
                for insert in (b"\xff\xd0", b"\xff\xff", b"\xff\xc4")]
    for frame in damaged:
        assert _today(frame) is ValueError
        assert CHECK.decide(frame) is None and _ours(frame) is ValueError


def test_a_header_the_walker_disagrees_on_is_banned():
    """The self-check on admission: a full decode that contradicts the walker (here told
    black for a bright frame) bans the header; its frames then all go to the full decode."""
    check = BlackCheck(BLACK_MAX_LEVEL, BUDGET)
    frame = encode(np.full((16, 16, 3), 200, np.uint8), "420", 77)
    assert check.decide(frame) is None  # not admitted yet
    check.confirm(frame, 16, 16, True)
    assert check.disagreed == 1 and check.decide(frame) is None
    other = encode(np.full((16, 16, 3), 200, np.uint8), "420", 78)
    check.confirm(other, 16, 8, False)  # a size the header does not say
    assert check.disagreed == 2 and check.decide(other) is None
    fine = encode(np.full((16, 16, 3), 200, np.uint8), "420", 79)
    check.confirm(fine, 16, 16, False)
    assert check.disagreed == 2 and check.decide(fine) == (16, 16, False)


def test_a_recording_with_black_frames_same_flags_brightness_only_when_asked(tmp_path,
                                                                             monkeypatch):
    """The cleaned layer's camera columns for a simulated ROS 2 and ROS 1 recording with
    blacked-out frames: flags, sizes and black count the same with brightness off (the
    default: null) as with it on (every frame decoded, brightness its block mean)."""
    from robolake.decode import _decode_slice
    from robolake.settings import Settings, reset_settings
    from robolake.simulate import RobotIdentity, simulate_recording

    robot = RobotIdentity("cam-0", "delivery", "eu-west")
    for fmt in ("mcap", "bag"):
        truth = simulate_recording(tmp_path, robot, 1_795_766_400_000_000_000, 8.0, seed=6,
                                   fmt=fmt, faults=["black_frames"])
        cams = {}
        for switch in ("off", "on"):
            monkeypatch.setenv("ROBOLAKE_CAMERA_BRIGHTNESS", switch)
            reset_settings()
            cams[switch] = _decode_slice(tmp_path / truth["file"], "raw/x").camera
        reset_settings()
        off, on = cams["off"], cams["on"]
        for name in ("log_ns", "stamp_ns", "bytes", "width", "height", "is_black"):
            assert (off[name] == on[name]).all(), name
        assert on["is_black"].sum() == truth["faults"]["black_frames"]["count"] > 0
        assert all(b is None for b in off["brightness"])
        assert on["brightness"].dtype == np.float64 and on["brightness"].min() >= 0
        assert (on["brightness"][on["is_black"]] < 1).all()
    assert Settings.from_env({"ROBOLAKE_CAMERA_BRIGHTNESS": "1"}).camera_brightness is True
    assert Settings.from_env({}).camera_brightness is False
    with pytest.raises(ValueError, match="ROBOLAKE_CAMERA_BRIGHTNESS"):
        Settings.from_env({"ROBOLAKE_CAMERA_BRIGHTNESS": "sometimes"})
