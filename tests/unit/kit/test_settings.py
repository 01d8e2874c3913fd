from services.kit import settings


def test_each_service_gets_its_own_database_on_a_shared_server():
    env = {"DATABASE_URL": "postgresql://app:pw@db.internal:5432/postgres?sslmode=require"}
    assert settings.load("roster", env).database_url == "postgresql://app:pw@db.internal:5432/caseflow_roster?sslmode=require"
    assert settings.load("caseload", env).database_url.endswith("/caseflow_caseload?sslmode=require")


def test_a_service_dsn_of_its_own_wins():
    env = {"DATABASE_URL": "postgresql://x@h/postgres", "CASEFLOW_ROSTER_DATABASE_URL": "postgresql://r@h2/roster"}
    assert settings.load("roster", env).database_url == "postgresql://r@h2/roster"


def test_kafka_security_options_are_passed_through():
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b1:9093,b2:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}
    options = settings.load("roster", env).kafka.client_options()
    assert options["bootstrap_servers"] == "b1:9093,b2:9093"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512" and options["sasl_plain_password"] == "p"


def test_secrets_do_not_show_in_the_settings_repr():
    env = {"KAFKA_SASL_PASSWORD": "hunter2", "CASEFLOW_JWT_SECRET": "topsecret",
           "DATABASE_URL": "postgresql://u:dbpass@h/postgres"}
    text = repr(settings.load("roster", env))
    assert "hunter2" not in text and "topsecret" not in text and "dbpass" not in text


def test_per_service_ports_and_overrides():
    assert settings.load("cases", {}).http_port == 8103
    assert settings.load("cases", {"CASEFLOW_CASES_HTTP_PORT": "9000"}).http_port == 9000
