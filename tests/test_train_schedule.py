import pytest

from gbmr.agents.train_schedule import TrainSchedule
from gbmr.core.errors import GbmrError


def test_no_phase_before_learning_starts_then_every_train_freq_steps():
    schedule = TrainSchedule(learning_starts=10, train_freq=4, gradient_steps=3)
    # 2 envs: env steps 2, 4, ..., 24; phases at 10 (first after the warm-up), 14, 18, 22
    due = [steps for steps in range(2, 26, 2) if schedule.phase(steps)]
    assert due == [10, 14, 18, 22]
    assert schedule.phase(26) == 3  # 26 - 22 >= 4: gradient_steps of them


def test_state_round_trip_resumes_the_wait():
    schedule = TrainSchedule(0, 5, 1)
    assert schedule.phase(7) == 1
    resumed = TrainSchedule(0, 5, 1)
    resumed.load_state_dict(schedule.state_dict())
    assert [resumed.phase(s) for s in (8, 11, 12)] == [0, 0, 1]


@pytest.mark.parametrize(("train_freq", "gradient_steps"), [(0, 1), (1, 0)])
def test_bad_frequencies_are_one_line_errors(train_freq, gradient_steps):
    with pytest.raises(GbmrError, match="train_freq and gradient_steps"):
        TrainSchedule(0, train_freq, gradient_steps)
