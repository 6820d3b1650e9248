// statsd daemon config for deploy/docker-compose.yml (mounted as /opt/statsd/config/udp.js
// in graphiteapp/graphite-statsd). Same namespace as the local stack
// (scripts/metrics_stack.py): stats.counters.<name>.rate|count, stats.timers.<name>.upper_99,
// stats.gauges.<name>; the dashboard (ops/grafana/recsys-dashboard.json) depends on it.
{
  "graphiteHost": "127.0.0.1",
  "graphitePort": 2003,
  "port": 8125,
  "servers": [{ "server": "./servers/udp", "address": "0.0.0.0", "port": 8125 }],
  "mgmt_address": "0.0.0.0",
  "mgmt_port": 8126,
  "backends": ["./backends/graphite"],
  "flushInterval": 1000,
  "percentThreshold": [90, 99],
  "deleteIdleStats": true,
  "graphite": { "legacyNamespace": false, "globalPrefix": "stats" }
}
