@worker_metrics_auth
Feature: The worker's /metrics behind the cluster key
  A worker started with the cluster key serves its metrics (tokens, generations, slots, the KV
  cache) only to those who bear it, as the queen and the hive do; its hive sends the key when it
  reads them. Health and readiness stay open.

  @llama
  Scenario: With a cluster key, the worker's metrics are refused without it and served with it
    Given a queen with the cluster key "ck-metrics-0123456789"
    And a real worker "counted" started with the cluster key "ck-metrics-0123456789" is registered
    Then worker "counted" refuses its metrics with 401 "MISSING_API_KEY" without a key
    And worker "counted" refuses its metrics with 401 "INVALID_API_KEY" with the key "ck-guess-0123456789"
    And worker "counted" serves its metrics with the key "ck-metrics-0123456789"
    And worker "counted" is still ready
