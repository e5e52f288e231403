from instsynth.plan.rng import item_rng, item_seed


def test_streams_are_order_independent_and_distinct():
    a = [item_rng(1, f"w{i}", "window").random() for i in range(5)]
    b = [item_rng(1, f"w{i}", "window").random() for i in reversed(range(5))][::-1]
    assert a == b
    assert item_rng(1, "w", "window").random() != item_rng(1, "w", "prompt").random()
    assert item_seed(1, "w") == item_seed(1, "w") != item_seed(1, "w", attempt=1)
    assert item_seed(1, "w") != item_seed(2, "w")
