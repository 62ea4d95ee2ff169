-- Alerting state (tracehouse/alerting/store.py, docs/alerting.md): rules created through the
-- API, rule health, alert instances, their history, silences and the notification outbox.
-- Small tables, not telemetry: in cluster mode each is one replica set across every node
-- (storage/schema.py _SHARED_TABLES), so any node holds all of it and no Distributed table is
-- needed. Mutable rows are ReplacingMergeTree(Version): a change inserts the row again with a
-- higher Version (ns since the epoch), readers use FINAL.

-- Rules created through /api/v1/alert-rules (rules of the YAML file live in the file).
-- Spec is the rule as JSON; Deleted = 1 marks a deleted rule.
CREATE TABLE IF NOT EXISTS tracehouse_alert_rules ${on_cluster} (
    Name String,
    Spec String CODEC(ZSTD(1)),
    Deleted UInt8,
    UpdatedAt DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    Version UInt64
) ENGINE = ${engine_tracehouse_alert_rules}
ORDER BY Name;

-- The latest evaluation of each rule: ok | err | unknown, the error, when and how long.
CREATE TABLE IF NOT EXISTS tracehouse_alert_rule_health ${on_cluster} (
    Name String,
    Health LowCardinality(String),
    LastError String,
    LastEvaluation DateTime64(3, 'UTC'),
    DurationMs Float64,
    Series UInt32,
    Version UInt64
) ENGINE = ${engine_tracehouse_alert_rule_health}
ORDER BY Name;

-- One row per alert instance (rule and label set), its state and the counters the evaluator
-- carries between evaluations (tracehouse/alerting/evaluator.py AlertInstance).
CREATE TABLE IF NOT EXISTS tracehouse_alert_state ${on_cluster} (
    Rule String,
    Fingerprint String,
    Labels Map(String, String),
    Annotations Map(String, String),
    State Enum8('inactive' = 0, 'pending' = 1, 'firing' = 2, 'resolved' = 3),
    Value Nullable(Float64),
    ActiveAt Nullable(DateTime64(3, 'UTC')),
    FiredAt Nullable(DateTime64(3, 'UTC')),
    ResolvedAt Nullable(DateTime64(3, 'UTC')),
    LastBreachAt Nullable(DateTime64(3, 'UTC')),
    RecoveringSince Nullable(DateTime64(3, 'UTC')),
    Breaches UInt32,
    Recoveries UInt32,
    Episode String,
    Actions UInt32,
    Exemplars Array(String),
    LastEvaluation DateTime64(3, 'UTC'),
    Version UInt64
) ENGINE = ${engine_tracehouse_alert_state}
ORDER BY (Rule, Fingerprint);

-- Every state change of an alert instance (GET /api/v1/alerts/history); kept 90 days.
CREATE TABLE IF NOT EXISTS tracehouse_alert_history ${on_cluster} (
    At DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    Rule String,
    Fingerprint String,
    Labels Map(String, String),
    FromState LowCardinality(String),
    ToState LowCardinality(String),
    Value Nullable(Float64),
    Episode String,
    Note String
) ENGINE = ${engine_tracehouse_alert_history}
ORDER BY (At, Rule, Fingerprint)
TTL toDateTime(At) + toIntervalDay(90);

-- Silences: label matchers (JSON) and a time range; an expired silence gets EndsAt = now.
CREATE TABLE IF NOT EXISTS tracehouse_silences ${on_cluster} (
    Id String,
    Matchers String,
    StartsAt DateTime64(3, 'UTC'),
    EndsAt DateTime64(3, 'UTC'),
    CreatedBy String,
    Comment String,
    Version UInt64
) ENGINE = ${engine_tracehouse_silences}
ORDER BY Id;

-- The outbox: every notification and scaling call, pending -> delivered | dead. Id is the
-- webhook-id (stable across retries and replays). Alerts maps each fingerprint in the body
-- to its status (firing | resolved): the group's last notification, which a restarted worker
-- compares against so that it neither forgets nor re-sends. Kept 30 days.
CREATE TABLE IF NOT EXISTS tracehouse_alert_outbox ${on_cluster} (
    Id String,
    Kind LowCardinality(String),
    Receiver String,
    GroupKey String,
    Target String,
    Status Enum8('pending' = 1, 'delivered' = 2, 'dead' = 3),
    Url String,
    Body String CODEC(ZSTD(1)),
    Alerts Map(String, String),
    CreatedAt DateTime64(3, 'UTC'),
    Deadline DateTime64(3, 'UTC'),
    NextAttemptAt DateTime64(3, 'UTC'),
    Attempts UInt32,
    LastStatusCode UInt16,
    LastError String,
    DeliveredAt Nullable(DateTime64(3, 'UTC')),
    Version UInt64
) ENGINE = ${engine_tracehouse_alert_outbox}
ORDER BY Id
TTL toDateTime(CreatedAt) + toIntervalDay(30)
