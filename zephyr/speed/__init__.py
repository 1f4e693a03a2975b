"""The speed levers, one module each, every one with an equality test against its plain twin in tests/speed/."""
