@audit
Feature: A tamper-evident audit log
  --audit-log on queen and hive appends one JSON line per authentication, admin action and step of
  an inference, each carrying the hash of the one before; rbee-keeper audit verify finds the first
  line edited, removed or reordered. When the log cannot be written, what needs it is refused.

  @llama
  Scenario: An inference through the queen leaves its caller and its life in the audit log, never the key
    Given an audited queen with the API key "audit-key-0123456789abcdef"
    And a real worker "audited" with 1 slot is registered
    When "audit-key-0123456789abcdef" streams 4 tokens of "Hello" through the queen with the request id "audit-req-1"
    And a client with the key "wrong-key-0123456789abcdef" asks the audited queen for the model list
    Then the audit log records "auth.ok" for "/v1/inference" from 127.0.0.1 with the fingerprint of "audit-key-0123456789abcdef"
    And the audit log records "inference.admitted", "inference.assigned" to "audited" and "inference.finished" for "audit-req-1"
    And the audit log records "auth.refused" for "/v1/models" offering the fingerprint of "wrong-key-0123456789abcdef"
    And neither key is anywhere in the audit log
    And rbee-keeper audit verify says OK

  Scenario: Admin actions on the queen are audited with their outcome
    Given an audited queen with the API key "audit-key-0123456789abcdef" and an admin key
    When a worker "audited-w1" is registered with the audited queen
    And the admin reloads the audited queen's keys
    And worker "audited-w1" is deregistered from the audited queen
    Then the audit log records, in order, the admin actions "worker.register" (200), "keys.reload" (200) and "worker.deregister" (204)
    And the audit log records "keys.reload" via "http"
    And rbee-keeper audit verify says OK

  Scenario: Admin actions on the hive are audited with their outcome
    Given an audited hive with the cluster key "hive-audit-0123456789abc"
    When the hive is asked with its cluster key to shut down worker "no-such-worker"
    And the hive is asked with its cluster key to download a model with an empty body
    And the hive is asked with the key "not-the-key-0123456789abc" to shut down worker "no-such-worker"
    Then the hive's audit log records the admin action "worker.shutdown" with status 404
    And the hive's audit log records the admin action "model.download" with status 400
    And the hive's audit log records "auth.refused" for "/v1/workers/{worker_id}/shutdown"
    And the hive's metrics say the audit log is available
    And rbee-keeper audit verify says OK of the hive's audit log

  Scenario Outline: rbee-keeper audit verify names the first line that was <changed>
    Given an audited queen with the API key "audit-key-0123456789abcdef" and an admin key
    And the admin has reloaded the audited queen's keys 3 times
    When line <line> of the audit log is <changed>
    Then rbee-keeper audit verify exits 1 naming line <named> as "<words>"

    Examples:
      | changed                        | line | named | words        |
      | edited                         | 3    | 3     | edited       |
      | removed                        | 3    | 3     | removed      |
      | swapped with the line after it | 3    | 3     | out of order |

  Scenario: The chain goes on across restarts and rotated files
    Given an audited queen with the API key "audit-key-0123456789abcdef" and an admin key, rotating at 2 KB
    And the admin has reloaded the audited queen's keys 6 times
    When the audited queen is stopped and started again
    And the admin has reloaded the audited queen's keys 6 times
    Then the audit log was rotated into more than one file, none over 2 KB
    And rbee-keeper audit verify says OK with entries numbered 1 on without a gap

  Scenario: A removed audit file refuses audited requests with 503 until SIGHUP reopens it
    Given an audited queen with the API key "audit-key-0123456789abcdef" and an admin key
    When the audit log file is removed
    Then registering a worker with the audited queen is refused with 503 "AUDIT_UNAVAILABLE"
    And the audited queen's metrics say the audit log is unavailable
    And the audited queen still answers its health check
    When the audited queen is sent SIGHUP
    Then registering a worker with the audited queen is answered 200
    And the audited queen's metrics say the audit log is available
    And rbee-keeper audit verify says OK

  Scenario: A full disk refuses audited requests with 503, and they run again once there is room
    Given an audited queen whose audit log is on a tiny file system
    When the file system of the audit log is filled up
    Then registering workers with the audited queen is refused with 503 "AUDIT_UNAVAILABLE" once the file's last page is full
    And the audited queen's metrics say the audit log is unavailable
    When room is made on the file system of the audit log
    Then registering a worker with the audited queen is answered 200
    And rbee-keeper audit verify says OK

  Scenario Outline: A queen that cannot go on with its audit log does not start
    When the queen is started with an audit log <where>
    Then it exits with code 2 saying "--audit-log"

    Examples:
      | where                                  |
      | in a folder that does not exist        |
      | whose last line was edited             |
