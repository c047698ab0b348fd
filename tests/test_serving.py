"""leanjax.audit.serving: accuracy of a served program, devices that fit."""


import numpy as np
import pytest

from leanjax.audit.serving import devices_that_fit, served_accuracy


def test_served_accuracy_ignores_padding_rows():
    batches = [{"x": np.array([0, 1, 2]), "label": np.array([0, 1, 1]), "mask": np.array([True, True, True])},
               {"x": np.array([1, 0, 0]), "label": np.array([1, 1, 1]), "mask": np.array([True, False, False])}]
    def program(x):
        return np.eye(3)[x]  # the argmax is the input

    assert served_accuracy(program, batches, ["x"]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="no real rows"):
        served_accuracy(program, [{**batches[1], "mask": np.zeros(3, bool)}], ["x"])


def test_devices_that_fit_by_memory():
    assert devices_that_fit(20 * 2**30, host_cores=2) == ["tpu-v4", "tpu-v6e", "a100", "h100-sxm", "tpu-v5p",
                                                          "h200-sxm"]
    assert devices_that_fit(2**30, host_cores=2)[:2] == ["cpu-2core", "tpu-v5e"]
    assert devices_that_fit(200 * 2**30) == []
