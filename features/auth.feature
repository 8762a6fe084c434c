@auth
Feature: API keys and the cluster key
  With API keys set, the queen serves only callers bearing one (health stays open). Hives and workers
  that share a cluster key take orders only from each other, and the queen's control routes take it too.

  Scenario: A request without a key is refused
    Given a queen that requires the API key "sk-alpha-0123456789ab"
    When a client without a key lists the workers
    Then the queen refuses with 401 "MISSING_API_KEY"

  Scenario: A request with a wrong key is refused
    Given a queen that requires the API key "sk-alpha-0123456789ab"
    When a client with the key "sk-wrong" lists the workers
    Then the queen refuses with 401 "INVALID_API_KEY"

  @smoke
  Scenario: The right key is served, and health needs none
    Given a queen that requires the API key "sk-alpha-0123456789ab"
    When a client with the key "sk-alpha-0123456789ab" lists the workers
    Then the queen serves it
    And a client without a key still gets the queen's health

  Scenario: Keys can come from a file
    Given a queen that reads its API keys from a file holding "sk-one-0123456789abc" and "sk-two-0123456789abc"
    When a client with the key "sk-two-0123456789abc" lists the workers
    Then the queen serves it

  Scenario: The official OpenAI client raises AuthenticationError for a wrong key
    Given a queen that requires the API key "sk-alpha-0123456789ab"
    And an OpenAI client pointed at the queen with the key "sk-nope"
    When the OpenAI client tries to list the models
    Then the OpenAI client raised AuthenticationError with code "INVALID_API_KEY" and type "authentication_error"

  Scenario: The cluster key opens the control routes and the metrics, not the client routes
    Given a queen with the API key "sk-alpha-0123456789ab" and the cluster key "ck-shared-0123456789"
    When a client with the key "ck-shared-0123456789" lists the workers
    Then the queen serves it
    When a client with the key "ck-shared-0123456789" reads the metrics
    Then the queen serves it
    When a client with the key "ck-shared-0123456789" asks for the model list
    Then the queen refuses the OpenAI call with 401 "INVALID_API_KEY" of type "authentication_error"

  Scenario: The metrics need a key like any other route
    Given a queen that requires the API key "sk-alpha-0123456789ab"
    When a client without a key reads the metrics
    Then the queen refuses with 401 "MISSING_API_KEY"

  Scenario: With a cluster key alone, the control routes are closed to everyone else
    Given a queen with the cluster key "ck-shared-0123456789"
    When a client without a key lists the workers
    Then the queen refuses with 401 "MISSING_API_KEY"
    When a client with the key "sk-guess" lists the workers
    Then the queen refuses with 401 "INVALID_API_KEY"

  @llama
  Scenario: A worker with the cluster key takes orders only from those who bear it
    Given a queen with the cluster key "ck-shared-0123456789"
    And a real worker "guarded" started with the cluster key "ck-shared-0123456789" is registered
    When a client asks worker "guarded" directly for 4 tokens without the key
    Then the worker refuses with 401 "MISSING_API_KEY"
    When a client cancels request "any-request" at worker "guarded" without the key
    Then the worker refuses with 401 "MISSING_API_KEY"
    When a client tells worker "guarded" to shut down with the key "ck-guess"
    Then the worker refuses with 401 "INVALID_API_KEY"
    And worker "guarded" is still ready
    When a client streams 4 tokens of "Hello" through the queen
    Then the answer ends with a done event
    When the queen is told to shut down worker "guarded"
    Then the queen says worker "guarded" accepted the shutdown

  @llama @slow
  Scenario: A hive and its worker join a queen through the cluster key
    Given a queen with the API key "sk-alpha-0123456789ab" and the cluster key "ck-shared-0123456789"
    And a hive started with the cluster key "ck-shared-0123456789"
    When a client without the cluster key asks the hive for a worker
    Then the hive refuses with 401 "MISSING_API_KEY"
    When the hive is asked for a worker with the cluster key
    Then the hive's worker is listed by the queen as idle
    When a client streams 4 tokens of "Hello" through the queen
    Then the answer ends with a done event

  @catalog @download-key
  Scenario: With a cluster key, the hive downloads models only for those who bear it
    Given a queen with the cluster key "ck-shared-0123456789"
    And a model hub that serves "test-org/tiny" with the file "tiny.gguf"
    And a hive started with the cluster key "ck-shared-0123456789" that downloads models from that hub
    When a client without the cluster key asks the hive to download "hf:test-org/tiny:tiny.gguf"
    Then the hive refuses with 401 "MISSING_API_KEY"
    When a client with the key "ck-guess" asks the hive to download "hf:test-org/tiny:tiny.gguf"
    Then the hive refuses with 401 "INVALID_API_KEY"
    And the hub was never asked for the file
    When the hive is asked with the cluster key to download "hf:test-org/tiny:tiny.gguf"
    Then the download of "hf:test-org/tiny:tiny.gguf" completes within 30 seconds

  @catalog @cli @download-key
  Scenario: rbee-keeper downloads through a hive with the cluster key it is configured with
    Given a queen with the cluster key "ck-shared-0123456789"
    And a model hub that serves "test-org/tiny" with the file "tiny.gguf"
    And a hive started with the cluster key "ck-shared-0123456789" that downloads models from that hub
    When the user downloads "hf:test-org/tiny:tiny.gguf" with rbee-keeper
    Then rbee-keeper exits with code 1
    And rbee-keeper's error says "cluster key" and names "MISSING_API_KEY"
    When rbee-keeper is configured with the cluster key "ck-shared-0123456789"
    And the user downloads "hf:test-org/tiny:tiny.gguf" with rbee-keeper
    Then rbee-keeper exits with code 0
    And rbee-keeper said "hf:test-org/tiny:tiny.gguf is ready" with the path of a file that exists
