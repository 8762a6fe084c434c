@config_files
Feature: queen-rbee and rbee-hive read TOML config files
  Settings come from a flag, else its RBEE_* variable, else the [queen] or [hive] table of the config
  files (--config FILE or RBEE_CONFIG, over ~/.config/rbee/config.toml, over /etc/rbee/config.toml),
  else the default. An unknown key stops the program naming it. `rbee-keeper config example` prints
  every setting with its default.

  Scenario: The queen takes its API key from the file --config names, and a flag beats the file
    Given a config file "rbee.toml" holding:
      """
      [queen]
      api_keys = ["sk-from-the-config-file-01"]
      """
    When a queen is started with --config rbee.toml
    Then the queen's models need the key "sk-from-the-config-file-01"
    When that queen is stopped and started again with --config rbee.toml --api-key sk-from-the-command-line-02
    Then the queen's models need the key "sk-from-the-command-line-02"
    And the key "sk-from-the-config-file-01" is refused with 401 "INVALID_API_KEY"

  Scenario: RBEE_CONFIG names the file
    Given a config file "elsewhere.toml" holding:
      """
      queen_url = "http://127.0.0.1:1"

      [queen]
      api_keys = ["sk-named-by-rbee-config-03"]
      """
    When a queen is started with RBEE_CONFIG naming elsewhere.toml
    Then the queen's models need the key "sk-named-by-rbee-config-03"

  Scenario: A hive with no flags but its port finds its queen in ~/.config/rbee/config.toml
    Given a queen
    And a config file "xdg/rbee/config.toml" holding:
      """
      [hive]
      queen_url = "{queen_url}"
      node_name = "from-the-user-config"
      """
    When a hive is started with XDG_CONFIG_HOME naming xdg and no --queen-url
    Then the queen lists the hive "from-the-user-config"

  Scenario: An unknown key stops the hive at start, naming it
    Given a config file "typo.toml" holding:
      """
      [hive]
      queen_url = "http://127.0.0.1:1"
      spawn_timout = 30
      """
    When rbee-hive is started with --config typo.toml
    Then it exits with code 2 saying "unknown key 'spawn_timout'"
    And it says "rbee-keeper config example hive"

  Scenario: The printed example, with its queen filled in, starts a hive
    Given a queen
    When the example of `rbee-keeper config example hive` is saved as "example.toml" with queen_url set
    And a hive is started with --config example.toml and no --queen-url
    Then the queen lists the hive "local"
