"""Test helpers shared by several test folders (servers started for real, not mocked)."""
