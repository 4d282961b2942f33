import torch
import torch.nn.functional as F

from upbench.memory import peak_cpu, vm_hwm_bytes


def test_peak_of_an_allocation_known_to_the_byte():
    assert peak_cpu(lambda: torch.empty(1000, 1000)) == 4_000_000
    assert peak_cpu(lambda: torch.empty(3, 5, dtype=torch.float64)) == 3 * 5 * 8


def test_unfold_output_plus_its_internal_temporary():
    x = torch.randn(1, 64, 128, 128)  # created before the window: not counted
    # F.unfold (1, 64, 128, 128), K=5: 100 MiB output + a 4 MiB contiguous copy freed inside (DESIGN.md §7)
    assert peak_cpu(lambda: F.unfold(x, 5, padding=2)) == 100 * 2**20 + 4 * 2**20


def test_peak_is_the_worst_moment_not_the_sum():
    def fn():
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(2000)  # 8000 B, live together with a: 12000
        del a, b
        c = torch.empty(2500)  # 10000 B alone
        return c

    assert peak_cpu(fn) == 12_000


def test_inputs_alive_before_the_window_are_not_counted():
    big, other = torch.randn(1 << 20), torch.randn(1 << 20)
    assert peak_cpu(lambda: big.add_(other)) == 0  # in place: no new allocation


def test_vm_hwm_is_readable_on_linux():
    v = vm_hwm_bytes()
    assert v is None or v > 0


def test_vm_hwm_cross_check_agrees_with_the_allocator_for_a_large_allocation():
    from upbench.memory import hwm_delta_cpu

    n = 50_000_000  # 200 MB, touched by ones(): physical pages, far above malloc arenas and page rounding
    physical = hwm_delta_cpu(lambda: torch.ones(n))
    if physical is None:
        import pytest

        pytest.skip("/proc/self/clear_refs is not writable here")
    assert abs(physical - peak_cpu(lambda: torch.ones(n))) < 0.05 * 4 * n
