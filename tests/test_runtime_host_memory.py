"""esort_jax.runtime.host_memory: the glibc malloc settings (each in a fresh interpreter: they
change the process's allocator), host buffers jax.device_put can alias, and releasing the pages
of a memory-mapped recording without changing what it reads."""

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from esort_jax.runtime.host_memory import aligned_zeros, drop_mapped_pages

REPO = Path(__file__).resolve().parents[1]
LIBC, LIBC_VERSION = platform.libc_ver()
GLIBC = LIBC == "glibc"
glibc_only = pytest.mark.skipif(
    not GLIBC or tuple(map(int, LIBC_VERSION.split(".")[:2])) < (2, 33),
    reason="the malloc settings are glibc's (elsewhere no-ops); counting mapped blocks needs mallinfo2 (glibc 2.33)",
)

# Allocates through libc and counts the blocks malloc serves with mmap (mallinfo2().hblks):
# a 4 MiB block after a 16 MiB one was freed (glibc's dynamic threshold has then risen to
# 16 MiB: heap by default), then a 64 MiB block (above any threshold: mmap by default).
_PROBE = textwrap.dedent("""
    import ctypes, json, platform, sys
    from esort_jax.runtime import host_memory

    setting = sys.argv[1]
    result = {"returned": getattr(host_memory, setting)(*map(int, sys.argv[2:])) if setting != "none" else None}
    if setting == "fix_mmap_threshold":
        result["cached"] = host_memory.fix_mmap_threshold(*map(int, sys.argv[2:])) is result["returned"]
    if platform.libc_ver()[0] != "glibc":
        print(json.dumps(result))
        sys.exit()

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    libc.free(libc.malloc(16 << 20))
    before = libc.mallinfo2().hblks
    medium = libc.malloc(4 << 20)
    result["medium_mapped"] = libc.mallinfo2().hblks - before
    large = libc.malloc(64 << 20)
    result["large_mapped"] = libc.mallinfo2().hblks - before - result["medium_mapped"]
    print(json.dumps(result))
""")


def _in_fresh_interpreter(setting: str, *args: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", _PROBE, setting, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_synthesis_fixes_the_mmap_threshold_where_glibc_allocates():
    # glibc: mallopt accepted (the threshold that keeps peak memory flat with duration);
    # elsewhere a no-op that says so.
    assert _in_fresh_interpreter("fix_mmap_threshold", 8 << 20)["returned"] is (platform.libc_ver()[0] == "glibc")


@glibc_only
def test_by_default_glibc_maps_large_blocks_and_raises_its_threshold():
    assert _in_fresh_interpreter("none") == {"returned": None, "medium_mapped": 0, "large_mapped": 1}


@glibc_only
def test_configure_host_allocator_serves_even_large_blocks_from_the_heap():
    assert _in_fresh_interpreter("configure_host_allocator") == {"returned": True, "medium_mapped": 0,
                                                                 "large_mapped": 0}


@glibc_only
def test_a_fixed_mmap_threshold_stays_where_it_was_set():
    result = _in_fresh_interpreter("fix_mmap_threshold", 1 << 20)
    assert result == {"returned": True, "cached": True, "medium_mapped": 1, "large_mapped": 1}


@pytest.mark.parametrize("shape, dtype, alignment", [
    ((100, 7), np.float32, 64), ((3,), np.int16, 64), ((5, 3, 2), np.float64, 4096),
])
def test_aligned_zeros(shape, dtype, alignment):
    array = aligned_zeros(shape, dtype, alignment)
    assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable
    assert array.ctypes.data % alignment == 0 and not array.any()


def test_device_put_aliases_an_aligned_buffer_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("aliasing host memory is a CPU-backend property")
    aligned = aligned_zeros((100, 7))
    assert jax.device_put(aligned).unsafe_buffer_pointer() == aligned.ctypes.data
    misaligned = np.zeros((101, 7), np.float32)[1:]
    if misaligned.ctypes.data % 64:  # the reason for aligned_zeros: an unaligned buffer is copied
        assert jax.device_put(misaligned).unsafe_buffer_pointer() != misaligned.ctypes.data


def _resident_kib(path: Path) -> int | None:
    """Resident KiB of this process's mappings of `path` (None without /proc/self/smaps)."""
    smaps = Path("/proc/self/smaps")
    if not smaps.is_file():
        return None
    total, inside = 0, False
    for line in smaps.read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def test_dropped_pages_are_released_and_read_back_the_same(tmp_path):
    expected = np.arange(2_000_000, dtype=np.float32).reshape(-1, 8)  # 8 MB
    np.save(tmp_path / "traces.npy", expected)
    mapped = np.load(tmp_path / "traces.npy", mmap_mode="r")
    np.testing.assert_array_equal(mapped, expected)  # every page read: resident
    before = _resident_kib(tmp_path / "traces.npy")
    half = mapped.shape[0] // 2
    drop_mapped_pages(mapped, 0, half)
    after = _resident_kib(tmp_path / "traces.npy")
    if before is not None:
        assert before > 7000 and after < before - 3000  # about half of the 7.8 MiB released
    drop_mapped_pages(mapped, half, mapped.shape[0])
    if before is not None:
        assert _resident_kib(tmp_path / "traces.npy") < 100
    np.testing.assert_array_equal(mapped, expected)  # re-read on demand, same values
    np.testing.assert_array_equal(mapped[half - 3:half + 3], expected[half - 3:half + 3])


def test_anything_but_a_read_only_memmap_is_left_alone(tmp_path):
    plain = np.arange(40, dtype=np.float32).reshape(10, 4)
    drop_mapped_pages(plain, 0, 10)
    np.testing.assert_array_equal(plain, np.arange(40).reshape(10, 4))
    np.save(tmp_path / "a.npy", plain)
    writable = np.load(tmp_path / "a.npy", mmap_mode="r+")
    writable[0, 0] = 99.0
    drop_mapped_pages(writable, 0, 10)
    assert writable[0, 0] == 99.0
    read_only = np.load(tmp_path / "a.npy", mmap_mode="r")
    for view, start, stop in ((read_only[:, ::2], 0, 10), (read_only, 5, 5), (read_only, 6, 2)):
        drop_mapped_pages(view, start, stop)
    np.testing.assert_array_equal(read_only[:, ::2], writable[:, ::2])
