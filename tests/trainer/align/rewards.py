"""A rule-based reward for the PPO test (imported by `module:function`)."""


def letter_a(prompt: str, completion: str) -> float:
    """Fraction of the completion's non-space characters that are 'a': dense, easy to raise."""
    chars = completion.replace(" ", "")
    return sum(c == "a" for c in chars) / max(1, len(chars))


def digit_share(prompt: str, completion: str, **row: object) -> float:
    """Fraction of the completion's non-space characters that are digits: a dense reward for GRPO,
    where a random model's rollouts hold few digits (imported by `module:function`)."""
    chars = completion.replace(" ", "")
    return sum(c.isdigit() for c in chars) / max(1, len(chars))
