@auth @rotation
Feature: Keys rotate without a restart
  SIGHUP (and, on the queen, POST /v2/admin/reload with an admin key) re-reads the key files. A key
  taken out of its file is refused from the next request on; answers already streaming finish. A
  reload whose files are broken keeps the keys in use and says why; it never leaves a server open.

  @llama
  Scenario: SIGHUP on the queen: the removed key is refused at once, the stream it started finishes
    Given a queen whose API key file holds "key-old-0123456789abcdef"
    And a real worker "rotation-a" with 1 slot is registered
    And a real worker "rotation-b" with 1 slot is registered
    And "key-old-0123456789abcdef" is streaming a 64-token answer through the queen
    When the API key file is changed to hold "key-new-0123456789abcdef" only
    And the queen is sent SIGHUP and says it reloaded its keys
    Then the answer of "key-old-0123456789abcdef" was still streaming when the keys changed
    And a client with the key "key-old-0123456789abcdef" is refused with 401 "INVALID_API_KEY"
    And a client with the key "key-new-0123456789abcdef" is served
    And the answer of "key-old-0123456789abcdef" ends with all 64 tokens and [DONE]
    And the queen is still running

  Scenario: An admin key reloads the queen's keys over HTTP; other keys may not
    Given a queen whose API key file holds "key-old-0123456789abcdef" and whose admin key is "admin-0123456789abcdef"
    When the API key file is changed to hold "key-new-0123456789abcdef" only
    And a client with the key "key-old-0123456789abcdef" asks the queen to reload its keys
    Then the reload is refused with 401 "INVALID_API_KEY"
    When a client with the key "admin-0123456789abcdef" asks the queen to reload its keys
    Then the reload answer says 1 API key, with one fingerprint added and one removed, and no key itself
    And a client with the key "key-old-0123456789abcdef" is refused with 401 "INVALID_API_KEY"
    And the key "key-new-0123456789abcdef" still opens the model list

  Scenario: A queen without an admin key file refuses the reload route, and says to use SIGHUP
    Given a queen whose API key file holds "key-old-0123456789abcdef"
    When a client with the key "key-old-0123456789abcdef" asks the queen to reload its keys
    Then the reload is refused with 403 "ADMIN_NOT_CONFIGURED" saying "SIGHUP"

  Scenario Outline: A reload from a broken key file keeps the keys in use and says why
    Given a queen whose API key file holds "key-old-0123456789abcdef" and whose admin key is "admin-0123456789abcdef"
    When the API key file is <broken>
    And a client with the key "admin-0123456789abcdef" asks the queen to reload its keys
    Then the reload is refused with 409 "KEY_RELOAD_FAILED" saying "<why>"
    And the queen's log says the reload failed saying "<why>"
    And the key "key-old-0123456789abcdef" still opens the model list
    And a client without a key is refused with 401 "MISSING_API_KEY"

    Examples:
      | broken                                  | why          |
      | made readable by other users            | chmod 600    |
      | emptied                                 | holds no key |
      | removed                                 | cannot read  |
      | changed to hold the short key "abc123"  | too short    |

  Scenario: SIGHUP with a broken key file keeps the queen's keys
    Given a queen whose API key file holds "key-old-0123456789abcdef"
    When the API key file is emptied
    And the queen is sent SIGHUP and says the reload failed
    Then the key "key-old-0123456789abcdef" still opens the model list
    And the queen is still running

  Scenario: SIGHUP on the hive: a cluster key taken out of its file is refused from the next request on
    Given a hive whose cluster key file holds "cluster-old-0123456789ab"
    When the cluster key file is changed to hold "cluster-new-0123456789ab" and "cluster-next-0123456789a"
    And the hive is sent SIGHUP and says it reloaded its keys
    Then a control call to the hive with the key "cluster-old-0123456789ab" is refused with 401 "INVALID_API_KEY"
    And a control call to the hive with the key "cluster-new-0123456789ab" gets past the key check
    And a control call to the hive with the key "cluster-next-0123456789a" gets past the key check

  Scenario: SIGHUP on the hive with a broken key file keeps its key
    Given a hive whose cluster key file holds "cluster-old-0123456789ab"
    When the cluster key file is made readable by other users
    And the hive is sent SIGHUP and says the reload failed
    Then a control call to the hive with the key "cluster-old-0123456789ab" gets past the key check
    And a control call to the hive without a key is refused with 401 "MISSING_API_KEY"
