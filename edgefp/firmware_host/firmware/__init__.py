"""The C firmware for microcontrollers: its sources (``c/``), build and launch, and its engine loaded on
the host."""
