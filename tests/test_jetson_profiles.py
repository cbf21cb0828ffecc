"""The profile each Jetson module gets, from the descriptions those devices give of themselves.

The strings are /proc/device-tree/model and /etc/nv_tegra_release as JetPack 6.x devices print
them (NVIDIA's developer kits and L4T release files as published in NVIDIA's documentation and
forums; typed in here, not captured on a device by edgeds' developers), with each module's
memory as /proc/meminfo reports it (the kernel keeps some: an 8 GB Orin Nano shows ~7.4 GiB).
"""

from __future__ import annotations

import pytest

from edgeds.hardware import detect
from edgeds.profiles import choose_profile, load_profiles

R36_3 = (
    "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
    "DATE: Mon May  6 17:34:21 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)
R36_4 = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)
R35_4 = (
    "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
    "DATE: Tue Aug  1 19:57:35 UTC 2023\n"
)

# (device-tree model, nv_tegra_release, MemTotal kB, cores) -> profile, L4T release, JetPack
RECORDED = [
    (
        "NVIDIA Jetson Orin Nano Developer Kit",
        R36_3,
        7_802_968,
        6,
        "jetson-orin-nano",
        "R36.3.0",
        "6",
    ),
    (
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
        R36_4,
        7_802_976,
        6,
        "jetson-orin-nano",
        "R36.4.3",
        "6",
    ),
    (
        "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
        R36_3,
        15_909_708,
        8,
        "jetson-orin-nx",
        "R36.3.0",
        "6",
    ),
    ("Jetson AGX Orin Developer Kit", R36_4, 31_962_656, 12, "jetson-agx-orin", "R36.4.3", "6"),
    (
        "NVIDIA Jetson AGX Orin Developer Kit",
        R35_4,
        64_335_320,
        12,
        "jetson-agx-orin",
        "R35.4.1",
        "5",
    ),
]


def _device(tmp_path, model: str, release: str, mem_kib: int, cores: int):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    cpuinfo = "\n".join(
        f"processor\t: {i}\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
        f"CPU implementer\t: 0x41\nCPU part\t: 0xd42\n"
        for i in range(cores)
    )
    (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kib} kB\nMemFree:  1 kB\n")
    (tmp_path / "proc/device-tree/model").write_text(model + "\x00")
    (tmp_path / "etc/nv_tegra_release").write_text(release)
    return tmp_path


@pytest.mark.parametrize("model,release,mem,cores,profile,l4t,jetpack", RECORDED)
def test_each_recorded_module_gets_its_profile(
    tmp_path, model, release, mem, cores, profile, l4t, jetpack
):
    hw = detect(_device(tmp_path, model, release, mem, cores))
    chosen, reasons = choose_profile(hw, load_profiles())
    assert chosen.name == profile, reasons
    assert hw.l4t_release == l4t and hw.jetpack == jetpack
    assert hw.describe()["jetpack"] == jetpack
    assert chosen.onnxruntime.providers[0] == "TensorrtExecutionProvider"


def test_an_unknown_jetson_module_is_named_and_refused_with_reasons(tmp_path):
    from edgeds.errors import ConfigError

    hw = detect(_device(tmp_path, "NVIDIA Jetson Xavier NX Developer Kit", R35_4, 7_000_000, 6))
    assert hw.jetson_model == "NVIDIA Jetson Xavier NX Developer Kit" and hw.jetson_module is None
    with pytest.raises(ConfigError, match="--profile"):
        choose_profile(hw, load_profiles())


def test_a_release_file_without_a_revision_leaves_the_release_unknown(tmp_path):
    hw = detect(
        _device(tmp_path, "NVIDIA Jetson Orin Nano Developer Kit", "garbage\n", 7_802_968, 6)
    )
    assert hw.jetson_module == "orin-nano" and hw.l4t_release is None and hw.jetpack is None
