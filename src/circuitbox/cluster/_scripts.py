"""The Lua scripts every replica runs in Redis: each is one atomic step, timed by Redis' own clock.

Keys of a group `g` (one hash tag, so a Redis Cluster keeps them in one slot):
- `circuitbox:{g}:state`    hash: breaker name -> its fleet record (JSON: state, gen, until, period, reason, by)
- `circuitbox:{g}:open`     sorted set: names of the open breakers, scored by the end of their open period (ms)
- `circuitbox:{g}:events`   pub/sub channel: every record that changed, with Redis' time of the change
- `circuitbox:{g}:replicas` sorted set: replica ids, scored by their last heartbeat (ms)
- `circuitbox:{g}:lease:{name}:{slot}` one half-open probe slot, held by a replica id, expiring (PX)
"""

from __future__ import annotations

# KEYS: state hash, open zset, channel. ARGV: name, expected gen, state, open_for_ms, period, reason, replica, at
# (when the change was made, the replica's estimate of Redis' ms clock; never later than now).
# Returns {1, record, now} applied, {0, record or "", now} another replica got there first (the generation in
# Redis is not the expected one), {2, record, now} Redis already holds that state (nothing changed).
PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('HGET', KEYS[1], ARGV[1])
local gen = 0
local state = 'closed'
if current then
  local record = cjson.decode(current)
  gen = record['gen']
  state = record['state']
end
if gen ~= tonumber(ARGV[2]) then
  return {0, current or '', now}
end
if current and state == ARGV[3] and state ~= 'open' then
  return {2, current, now}
end
local until_ms = 0
if ARGV[3] == 'open' then
  until_ms = now + tonumber(ARGV[4])
end
local at = math.min(tonumber(ARGV[8]) or now, now)
local record = cjson.encode({state = ARGV[3], gen = gen + 1, ['until'] = until_ms, period = tonumber(ARGV[5]),
                             reason = ARGV[6], by = ARGV[7], at = at})
redis.call('HSET', KEYS[1], ARGV[1], record)
if ARGV[3] == 'open' then
  redis.call('ZADD', KEYS[2], until_ms, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('PUBLISH', KEYS[3], cjson.encode({name = ARGV[1], now = now, record = record}))
return {1, record, now}
"""

# KEYS: replicas zset, state hash. ARGV: replica, stale_ms. The heartbeat and the resync in one round trip:
# returns {now, live replica count, name1, record1, name2, record2, ...}.
TICK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local out = {now, redis.call('ZCARD', KEYS[1])}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all do
  out[#out + 1] = all[i]
end
return out
"""

# ARGV: lease key prefix, slots (half_open_max_calls), wanted, ttl_ms, replica. Returns the slots granted.
ACQUIRE_LEASES = """
local granted = {}
for slot = 0, tonumber(ARGV[2]) - 1 do
  if #granted >= tonumber(ARGV[3]) then
    break
  end
  if redis.call('SET', ARGV[1] .. slot, ARGV[5], 'NX', 'PX', ARGV[4]) then
    granted[#granted + 1] = slot
  end
end
return granted
"""

# KEYS: one lease. ARGV: replica, ttl_ms (0: release). Only the holder may extend or release its lease.
TOUCH_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('DEL', KEYS[1])
"""


def keys(group: str) -> dict[str, str]:
    """The key names of `group`."""
    prefix = f"circuitbox:{{{group}}}"
    return {
        "state": f"{prefix}:state",
        "open": f"{prefix}:open",
        "events": f"{prefix}:events",
        "replicas": f"{prefix}:replicas",
        "lease": f"{prefix}:lease:",
    }
