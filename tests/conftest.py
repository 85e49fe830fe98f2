"""Registers the fixture modules: real SecantusDB, real RabbitMQ, the real intake under uvicorn."""

pytest_plugins = [
    "tests.fixtures.mongo",
    "tests.fixtures.rabbit",
    "tests.fixtures.gateway",
    "tests.fixtures.tcp_proxy",
    "tests.fixtures.processes",
    "tests.fixtures.dev_gateway",
    "tests.fixtures.browser",
    "tests.fixtures.fleet",
    "tests.fixtures.emulators",
    "tests.fixtures.ppns_devices",
    "pushgw.testing",
]
