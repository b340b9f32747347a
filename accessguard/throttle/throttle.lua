-- accessguard.throttle: _MemoryStore.count, atomic in Redis, one round trip
-- per statement. The statement rate first; a statement it refuses is not
-- counted. Then the distinct customers (unless the rate refused, in modes
-- peek and hit); a statement they refuse adds no customer.
--
-- KEYS[1] accessguard:<user>/statements  member: a unique id, score: when
-- KEYS[2] accessguard:<user>/customers   member: customer id, score: last read
-- ARGV[1] now            ARGV[2] mode: peek | hit | record
-- ARGV[3] statements: the newest time that has left the window ('' no limit)
-- ARGV[4] its count      ARGV[5] its seconds
-- ARGV[6] customers: the newest time that has left the window ('' no limit)
-- ARGV[7] its count      ARGV[8] its seconds
-- ARGV[9] this statement's member; ARGV[10..] the customer ids it touches
--
-- Times are passed and returned as strings: Lua prints a number with 14
-- digits, a double needs 17. Returns false (it may run), or {1 statements |
-- 2 customers, the count with this statement, the time of the entry whose
-- leaving lets it pass (false: never)}. Keys expire one window after their
-- last entry.
local now, mode = ARGV[1], ARGV[2]
local verdict = false
if ARGV[3] ~= '' then
  local key, count = KEYS[1], tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[3])
  local n = redis.call('ZCARD', key)
  if n >= count then
    local at = redis.call('ZRANGE', key, n - count, n - count, 'WITHSCORES')
    verdict = {1, n + 1, at[2]}
  elseif mode ~= 'peek' then
    redis.call('ZADD', key, now, ARGV[9])
    redis.call('EXPIRE', key, ARGV[5])
  end
end
if ARGV[6] == '' or #ARGV < 10 or (verdict and mode ~= 'record') then return verdict end
local key, since, count = KEYS[2], tonumber(ARGV[6]), tonumber(ARGV[7])
if mode ~= 'record' then
  local wanted, others = {}, {}
  for i = 10, #ARGV do wanted[ARGV[i]] = true end
  local members = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    if not wanted[members[i]] and tonumber(members[i + 1]) > since then
      others[#others + 1] = members[i + 1]
    end
  end
  local total = #others + #ARGV - 9
  if total > count then return {2, total, others[total - count] or false} end
end
if mode ~= 'peek' then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[6])
  for i = 10, #ARGV do redis.call('ZADD', key, now, ARGV[i]) end
  redis.call('EXPIRE', key, ARGV[8])
end
return false
