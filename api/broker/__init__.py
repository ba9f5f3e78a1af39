"""The broker's health as the API sees it: timeouts, the circuit, admission, readiness and the results backend."""
