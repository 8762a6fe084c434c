@catalog
Feature: The hive's model catalog
  Each hive keeps a SQLite catalog of the models it holds: the built-in default model and every
  model it downloaded. A catalog file that is damaged never loses a model that is on disk.

  Background:
    Given a queen
    And a model hub that serves "test-org/tiny" with the file "tiny.gguf"
    And a hive that downloads models from that hub

  Scenario: The catalog lists the default model and a downloaded one
    When the hive is asked to download "hf:test-org/tiny:tiny.gguf"
    Then the download of "hf:test-org/tiny:tiny.gguf" completes within 30 seconds
    And the hive's catalog lists "smollm2-135m-instruct" as a "builtin" model
    And the hive's catalog lists "hf:test-org/tiny:tiny.gguf" as a "hf" model with its size and checksum

  Scenario: A corrupt catalog is set aside and rebuilt from the files when the hive starts
    Given the hive has downloaded "hf:test-org/tiny:tiny.gguf"
    When the hive is stopped
    And the hive's catalog file is overwritten with garbage
    And the hive is started again
    Then the hive's catalog lists the file "tiny.gguf"
    And a backup of the corrupt catalog is kept
    And asking for "hf:test-org/tiny:tiny.gguf" again fetches nothing more from the hub
