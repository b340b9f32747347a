-- accessguard.throttle: MemoryStore.count, atomic in Redis, one round trip
-- per statement. The statement rate first; a statement it refuses is not
-- counted. Then the distinct customers (unless the rate refused, in modes
-- peek and hit); a statement they refuse adds no customer.
--
-- KEYS[1] accessguard:<user>/statements  member: a unique id, score: when
-- KEYS[2] accessguard:<user>/customers   member: customer id, score: last read
-- KEYS[3], KEYS[4] their horizons (<set>:window): a hash, window seconds ->
--   until when a caller with that window may still count (the callers' clock)
-- ARGV[1] now            ARGV[2] mode: peek | hit | record
-- ARGV[3] statements: the newest time that has left the window ('' no limit)
-- ARGV[4] its count      ARGV[5] its seconds
-- ARGV[6] customers: the newest time that has left the window ('' no limit)
-- ARGV[7] its count      ARGV[8] its seconds
-- ARGV[9] this statement's member
-- ARGV[10] lease: statement slots wanted beyond this one (0: none), in mode hit
-- ARGV[11] the lease's end (now + its seconds)  ARGV[12] its seconds, rounded up
-- ARGV[13..] the customer ids the statement touches
--
-- Leases (stores.py): far below a limit (LEASE_ROOM left after this
-- statement), a hit may reserve up to ARGV[10] more statement slots (one per
-- 16 left), and register its customers, with the lease's END as their score:
-- at or after any moment the instance uses them, so every window that could
-- hold such a use counts them, and no window ever holds more than the limit.
-- Unused slots only make other instances wait a little sooner. Customers'
-- scores only grow (ZADD GT), whatever this caller's limit: no read of an
-- instance counting exactly lowers the date an instance with a larger limit
-- leased (the memory store keeps the later time too). A key's life is only
-- ever lengthened.
--
-- Times are passed and returned as strings: Lua prints a number with 14
-- digits, a double needs 17. Returns {which, count, at, slots, registered}:
-- which 0 (it may run), 1 statements or 2 customers (refused, with the count
-- with this statement and the time of the entry whose leaving lets it pass,
-- false: never); slots reserved and whether its customers were registered
-- until the lease's end (1) or at now (0).
local LEASE_ROOM = 256
local now, mode = ARGV[1], ARGV[2]
local lease, lease_end, lease_ttl = tonumber(ARGV[10]), ARGV[11], tonumber(ARGV[12])
local first = 13
local function expire(key, seconds)
  if redis.call('TTL', key) < seconds then redis.call('EXPIRE', key, seconds) end
end
-- Instances may count one set over windows of different lengths (limits.toml
-- rolling out, reloads). Each counts only its own window (ZCOUNT), and an
-- entry is dropped only once it has left every window still in use, so no
-- window trims what a longer one must count. Each caller keeps its own
-- window's field at least one window ahead, whatever the verdict and the
-- mode (renewed to two windows ahead, so at most once a window): a window is
-- in use until one to two of its lengths after its last statement; lapsed
-- fields are dropped. Returns the longest window in use.
-- MemoryStore._horizon takes the same steps.
local function horizon(key, seconds)
  local t, own = tonumber(now), tonumber(seconds)
  local keep, mine = own, false
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local length, ends = tonumber(fields[i]), tonumber(fields[i + 1])
    if length == own then mine = ends end
    if ends <= t then
      redis.call('HDEL', key, fields[i])
    elseif length > keep then
      keep = length
    end
  end
  if not mine or mine < t + own then
    redis.call('HSET', key, seconds, t + 2 * own)
    expire(key, 2 * keep + 60)  -- garbage only: the fields' until decides
  end
  return keep
end
-- What a set may be trimmed to: its own window's start when that is the
-- longest in use, else a second before the longest one's (only ever less).
local function trim_to(keep, seconds, since)
  if keep == tonumber(seconds) then return since end
  return tonumber(now) - keep - 1
end
local keep_statements = ARGV[3] ~= '' and horizon(KEYS[3], ARGV[5])
local keep_customers = ARGV[6] ~= '' and horizon(KEYS[4], ARGV[8])
local verdict = false
local slots = 0
if ARGV[3] ~= '' then
  local key, count = KEYS[1], tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', trim_to(keep_statements, ARGV[5], ARGV[3]))
  -- this window's entries are the newest n: the set's last ranks
  local n, total = redis.call('ZCOUNT', key, '(' .. ARGV[3], '+inf'), redis.call('ZCARD', key)
  if n >= count then
    local at = redis.call('ZRANGE', key, total - count, total - count, 'WITHSCORES')
    verdict = {1, n + 1, at[2], 0, 0}
  elseif mode ~= 'peek' then
    redis.call('ZADD', key, now, ARGV[9])
    local ttl = keep_statements
    local room = count - n - 1
    if mode == 'hit' and lease > 0 and room >= LEASE_ROOM then
      slots = math.min(lease, math.floor(room / 16))
      for i = 1, slots do redis.call('ZADD', key, lease_end, ARGV[9] .. ':' .. i) end
      ttl = ttl + lease_ttl
    end
    expire(key, ttl)
  end
end
if ARGV[6] == '' or #ARGV < first or (verdict and mode ~= 'record') then
  return verdict or {0, 0, false, slots, 0}
end
local key, since, count = KEYS[2], tonumber(ARGV[6]), tonumber(ARGV[7])
local total = #ARGV - first + 1
if mode ~= 'record' then
  local wanted, others = {}, {}
  for i = first, #ARGV do wanted[ARGV[i]] = true end
  local members = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    if not wanted[members[i]] and tonumber(members[i + 1]) > since then
      others[#others + 1] = members[i + 1]
    end
  end
  total = #others + total
  if total > count then return {2, total, others[total - count] or false, slots, 0} end
end
local registered = 0
if mode ~= 'peek' then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', trim_to(keep_customers, ARGV[8], ARGV[6]))
  local at, ttl = now, keep_customers
  if mode == 'hit' and lease > 0 and count - total >= LEASE_ROOM then
    at, ttl, registered = lease_end, ttl + lease_ttl, 1
  end
  for i = first, #ARGV do redis.call('ZADD', key, 'GT', at, ARGV[i]) end
  expire(key, ttl)
end
return verdict or {0, 0, false, slots, registered}
