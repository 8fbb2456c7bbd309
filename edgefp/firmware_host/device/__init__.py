"""The device side written in Python: the agent (Raspberry Pi, Coral, simulated boards), its sample
socket and a simulated sensor."""
