import numpy as np
import pytest
from avalanche.evaluation import functional as av
from avalanche.evaluation.metrics import Accuracy

from moecl import metrics
from moecl.metrics import summarize

# Hand-made 3 x 3 accuracy matrix; every value below is worked out by hand from design.md.
R = [
    [90.0, 10.0, 5.0],
    [70.0, 80.0, 20.0],
    [60.0, 75.0, 85.0],
]


def test_average_accuracy_by_hand():
    assert metrics.average_accuracy(R) == pytest.approx([90.0, 75.0, (60 + 75 + 85) / 3])
    assert metrics.average_incremental_accuracy(R) == pytest.approx((90 + 75 + 220 / 3) / 3)


def test_forgetting_uses_max_over_earlier_rows():
    # f_1 = max(90, 70) - 60 = 30; f_2 = max(80) - 75 = 5
    assert metrics.forgetting_per_experience(R) == pytest.approx([30.0, 5.0])
    assert metrics.forgetting(R) == pytest.approx(17.5)
    # the max is over rows j..T-1, not the diagonal: here it peaks after the diagonal
    assert metrics.forgetting_per_experience([[50, 0, 0], [80, 60, 0], [40, 60, 70]]) == pytest.approx([40.0, 0.0])


def test_bwt_and_fwt_by_hand():
    assert metrics.bwt(R) == pytest.approx(((60 - 90) + (75 - 80)) / 2)
    # FWT = mean_{j>=2} R[j-1][j] - b_j with b = (0, 12, 4): (10 - 12 + 20 - 4) / 2
    assert metrics.fwt(R, [0.0, 12.0, 4.0]) == pytest.approx(7.0)
    assert metrics.fwt(R, None) is None


def test_single_experience_has_no_forgetting():
    assert metrics.forgetting([[80.0]]) is None
    assert metrics.bwt([[80.0]]) is None


def test_multi_domain_transfer_average_last():
    md = metrics.multi_domain(R)
    # Transfer: j=2 -> mean(R[1][2]) = 10; j=3 -> mean(5, 20) = 12.5
    assert md["transfer"] == pytest.approx((10 + 12.5) / 2)
    assert md["average"] == pytest.approx(np.mean(R))
    assert md["last"] == pytest.approx(220 / 3)


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy([[1.0, 2.0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forgetting_and_bwt_agree_with_avalanche(seed):
    m = np.random.default_rng(seed).uniform(0, 100, size=(5, 5))
    # Avalanche's forgetting matrix: F[t, k] = R[k, k] - R[t, k] for t > k.
    F = av.forgetting(m)
    assert metrics.bwt(m) == pytest.approx(-F[-1, :-1].mean())
    # Our forgetting uses the best accuracy so far, so it bounds Avalanche's from above,
    # and equals it on a matrix whose columns peak on the diagonal.
    assert metrics.forgetting(m) >= -metrics.bwt(m) - 1e-9
    peaked = np.tril(np.full((5, 5), 50.0)) + np.diag(np.full(5, 40.0))
    assert metrics.forgetting(peaked) == pytest.approx(av.forgetting(peaked)[-1, :-1].mean())


def test_accuracy_agrees_with_avalanche_accuracy_metric():
    import torch

    pred = torch.tensor([0, 1, 1, 2, 2, 2, 3, 0])
    true = torch.tensor([0, 1, 2, 2, 2, 1, 3, 3])
    acc = Accuracy()
    acc.update(pred, true)
    assert 100.0 * float((pred == true).float().mean()) == pytest.approx(100.0 * acc.result())


def test_summarize_keys_follow_the_schema():
    s = summarize([[90.0, 0.0], [80.0, 70.0]])
    assert set(s) >= {
        "accuracy_matrix", "average_accuracy", "last_accuracy", "average_incremental_accuracy",
        "forgetting", "bwt", "fwt",
    }
    assert s["last_accuracy"] == 75.0
    assert s["forgetting"] == 10.0
    assert s["fwt"] is None
