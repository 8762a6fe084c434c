@provisioning
Feature: Provisioning models and workers on a hive
  A hive downloads models from a Hugging Face style hub (resumable, verified), checks that a worker
  can run before it starts one, and a queen can ask a hive for a worker on demand.

  Background:
    Given a queen

  Scenario: A download that drops at 40 % resumes and completes, with progress events
    Given a model hub that serves "test-org/tiny" with the file "tiny.gguf" and drops the first transfer at 40 %
    And a hive that downloads models from that hub
    When the hive is asked to download "hf:test-org/tiny:tiny.gguf"
    Then the download progress of "hf:test-org/tiny:tiny.gguf" shows bytes arriving and ends complete
    And the hub was asked to resume the file where the transfer dropped
    And the hive's catalog lists "hf:test-org/tiny:tiny.gguf" as a "hf" model with its size and checksum

  Scenario: rbee-keeper downloads a model through the hive, following its progress to the end
    Given a model hub that serves "test-org/tiny" with the file "tiny.gguf" and drops the first transfer at 40 %
    And a hive that downloads models from that hub
    When the user downloads "hf:test-org/tiny:tiny.gguf" with rbee-keeper
    Then rbee-keeper exits with code 0
    And rbee-keeper said "hf:test-org/tiny:tiny.gguf is ready" with the path of a file that exists
    And the hive's catalog lists "hf:test-org/tiny:tiny.gguf" as a "hf" model

  Scenario: A model the hub does not have is a clear error
    Given a model hub that serves "test-org/tiny" with the file "tiny.gguf"
    And a hive that downloads models from that hub
    When the hive is asked to start a worker on "hf:test-org/tiny:missing.gguf" and wait
    Then the hive refuses with 404 "MODEL_NOT_FOUND" saying "does not exist"

  Scenario: A gated model without a token is a clear error
    Given a model hub that serves "test-org/gated" with the file "tiny.gguf" only with a token
    And a hive that downloads models from that hub
    When the hive is asked to start a worker on "hf:test-org/gated:tiny.gguf" and wait
    Then the hive refuses with 403 "MODEL_ACCESS_DENIED" saying "HF_TOKEN"

  Scenario: The hive lists the devices its workers can use, as llama.cpp sees them
    Given a hive
    When a client asks the hive for its devices
    Then the hive lists the CPU with its memory, and every device it lists is one a worker can be started on

  Scenario Outline: A worker the hive cannot run is refused before it starts, naming what is available
    Given a hive with a memory budget of <budget> MiB
    When the hive is asked to start a worker on the default model with backend "<backend>" and device <device>
    Then the hive refuses with <status> "<code>" saying "<hint>"
    And the hive runs no worker

    Examples:
      | budget | backend | device | status | code             | hint             |
      | 0      | npu     | 0      | 400    | INVALID_BACKEND  | Available: cpu   |
      | 0      | cpu     | 3      | 400    | DEVICE_NOT_FOUND | Available devices: 0 |
      | 64     | cpu     | 0      | 507    | INSUFFICIENT_RAM | MiB available    |

  @llama @slow
  Scenario: A request for a model no worker serves starts one on a hive, end to end
    Given a model hub that serves "test-org/smol" with the file "smol.gguf" holding the default model's weights over a slow link
    And a hive that downloads models from that hub
    And the hive has told the queen it is alive
    When a person asks the fleet "Say hello" for 8 tokens of model "hf:test-org/smol:smol.gguf" from the command line
    Then the command line printed generated text and exited with success
    And while it waited the command line said a hive was getting "hf:test-org/smol:smol.gguf" ready
    And the queen lists an idle worker for "hf:test-org/smol:smol.gguf" on the hive
