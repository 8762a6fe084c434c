@hive_metrics
Feature: The hive's /metrics
  rbee-hive serves Prometheus metrics like the queen and the worker: downloads (bytes, completions,
  failures, resumes), worker spawns, crashes, restarts, failed health checks, and memory per device.

  Background:
    Given a queen

  Scenario: Downloads are counted: the bytes, the resume after a dropped transfer, a failure
    Given a model hub that serves "test-org/tiny" with the file "tiny.gguf" and drops the first transfer at 40 %
    And a hive that downloads models from that hub
    When the hive is asked to download "hf:test-org/tiny:tiny.gguf"
    Then the download progress of "hf:test-org/tiny:tiny.gguf" shows bytes arriving and ends complete
    And the hive's metrics count 1 completed download, 1 resume, 0 failures and the bytes of "hf:test-org/tiny:tiny.gguf"
    When the hive is asked to start a worker on "hf:test-org/tiny:missing.gguf" and wait
    Then the hive's metric rbee_hive_download_failures_total reads 1

  Scenario: A spawn, a crash and the restart are counted, and host memory is reported
    Given a hive that restarts failed workers, with a worker on the default model
    Then the hive's metric rbee_hive_worker_spawns_total reads 1
    And the hive's metric rbee_hive_worker_crashes_total reads 0
    And the hive's metrics report host memory, free at most total
    When the hive's worker process is killed
    Then the queen lists another idle worker from the hive within 60 seconds
    And the hive's metric rbee_hive_worker_crashes_total reads 1
    And the hive's metric rbee_hive_worker_restarts_total reads 1
    And the hive's metric rbee_hive_worker_spawns_total reads 1

  Scenario: The failed health checks of a worker that stopped answering are counted
    Given a hive with a worker on the default model
    When the hive's worker process is frozen
    Then the hive's worker process is gone within 30 seconds
    And the hive's metric rbee_hive_health_check_failures_total reads at least 3
    And the hive's metric rbee_hive_worker_crashes_total reads 0

  Scenario: With a cluster key, the hive's metrics need it
    Given a hive started with the cluster key "hive-metrics-cluster-key-0123"
    Then the hive's metrics are refused without the cluster key and served with it
