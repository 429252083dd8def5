//! The Lua scripts `RedisStorage` runs, each one atomic step on one node: a compare-and-swap,
//! the counted writes that keep a namespace's quota exact, and the bounded hash writes
//! sessions use.

/// Sets a key only if its current value is the expected one (or it is missing, when
/// `ARGV[1]` is "0"); `ARGV[4]` is an expiry in milliseconds or "".
pub(super) const CAS_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"#;

/// A write counted in its namespace's usage: `KEYS[2]` is a hash holding `#keys`, `#bytes`,
/// `#dk` and `#db` (key and byte room moved to this record from others, see
/// [`QUOTA_MOVE`]) and `k:KEY` = the size (name plus value) of each key it counts; `KEYS[3]` a
/// sorted set of when counted keys expire, through which keys Redis has expired are given back
/// (a few per call); `KEYS[4]` the index of the plain keys it counts (a sorted set of their
/// names, all scored 0, so in byte order), which [`LIST_SCRIPT`] pages through. `ARGV[1]` is
/// the operation (`set`, `cas`, `incr`, `del`, `expire`, and for hashes `hset`, `hdel`,
/// `rename`, whose target is `KEYS[5]`), `ARGV[2]` and `ARGV[3]` the quota's keys and bytes
/// (to which the moved room is added), the rest the operation's own arguments, as for the
/// uncounted commands. An expiry entry may be older than its key's expiry (a session's expiry
/// slides without counted writes): when it comes due, the key's expiry is looked up and the
/// entry moved. A write that would go over the quota is refused with a `TABULA_QUOTA` error
/// before it is made (an increment, whose size is known only after, is undone in the same
/// script, so no one ever sees it).
///
/// A counted key that has expired but is not given back yet is simply written again: it is
/// still counted once. The common case, an increment of a counted key, is two commands (three
/// when its number of digits changes); a new plain key adds one `ZADD` to the index.
pub(super) const COUNTED_SCRIPT: &str = r#"
local key, usage, index, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, counted = ARGV[1], 'k:' .. KEYS[1]
local refused = 'TABULA_QUOTA the namespace is at its storage quota'
local got = redis.call('HMGET', usage, '#keys', '#bytes', counted, '#dk', '#db')
local tracked = got[3] ~= false
local max_keys = tonumber(ARGV[2]) + tonumber(got[4] or '0')
local max_bytes = tonumber(ARGV[3]) + tonumber(got[5] or '0')
-- The common case first: incrementing a counted key. Only a change in its number of digits
-- changes the usage, and nothing else needs looking at.
if op == 'incr' and tracked then
  local n = redis.call('INCRBY', key, ARGV[4])
  local digits = (n > -1e14 and n < 1e14) and #tostring(n) or redis.call('STRLEN', key)
  local size, old = #key + digits, tonumber(got[3])
  if size ~= old then
    local bytes = tonumber(got[2] or '0') - old + size
    if size > old and bytes > max_bytes then
      redis.call('DECRBY', key, ARGV[4])
      return redis.error_reply(refused)
    end
    redis.call('HSET', usage, counted, size, '#bytes', bytes)
  end
  return n
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function forget(k) uncount(usage, index, names, k) end
reclaim(usage, index, names, now)
if op == 'del' then
  local n = redis.call('DEL', key)
  forget(key)
  return n
elseif op == 'rename' then
  local to = KEYS[5]
  if redis.call('EXISTS', key) == 0 then return 0 end
  redis.call('RENAME', key, to)
  -- The key it replaced is gone; its own count moves to its new name.
  forget(to)
  local size = redis.call('HGET', usage, counted)
  if size then
    local moved = tonumber(size) - #key + #to
    redis.call('HDEL', usage, counted)
    redis.call('HSET', usage, 'k:' .. to, moved)
    redis.call('HINCRBY', usage, '#bytes', moved - tonumber(size))
    redis.call('ZREM', index, key)
    local left = redis.call('PTTL', to)
    if left > 0 then redis.call('ZADD', index, now + left, to) end
  end
  return 1
elseif op == 'expire' then
  if redis.call('EXISTS', key) == 0 then
    forget(key)
    return 0
  end
  if ARGV[4] == '' then
    redis.call('PERSIST', key)
    redis.call('ZREM', index, key)
  else
    redis.call('PEXPIRE', key, ARGV[4])
    if redis.call('HEXISTS', usage, counted) == 1 then
      redis.call('ZADD', index, now + tonumber(ARGV[4]), key)
    end
  end
  return 1
end
-- The reclaim above may have given this key back: read the usage again.
got = redis.call('HMGET', usage, '#keys', '#bytes', counted)
tracked = got[3] ~= false
-- A plain key new to the record enters its index.
local function index_new()
  if not tracked then redis.call('ZADD', names, 0, key) end
end
local keys = tonumber(got[1] or '0') + (tracked and 0 or 1)
local old = tracked and tonumber(got[3]) or 0
local bytes = tonumber(got[2] or '0') - old
local function over(size)
  return (not tracked and keys > max_keys) or (size > old and bytes + size > max_bytes)
end
local function record(size)
  redis.call('HSET', usage, counted, size, '#keys', keys, '#bytes', bytes + size)
end
if op == 'hset' then
  local field, value, ttl = ARGV[4], ARGV[5], ARGV[8]
  local after = hash_plan(key, field, value, tonumber(ARGV[6]), tonumber(ARGV[7]))
  if after < 0 then return after end
  if over(#key + after) then return redis.error_reply(refused) end
  hash_apply(key, field, value, after, ttl)
  redis.call('ZADD', index, now + tonumber(ttl), key)
  record(#key + after)
  return after
elseif op == 'hdel' then
  local removed, after = hash_remove(key, ARGV[4])
  if removed == 0 then return 0 end
  if after then record(#key + after) else forget(key) end
  return 1
end
if op == 'incr' then
  local existed = redis.call('EXISTS', key) == 1
  local n = redis.call('INCRBY', key, ARGV[4])
  local size = #key + redis.call('STRLEN', key)
  if over(size) then
    if existed then redis.call('DECRBY', key, ARGV[4]) else redis.call('DEL', key) end
    return redis.error_reply(refused)
  end
  local left = redis.call('PTTL', key)
  if left > 0 then redis.call('ZADD', index, now + left, key) end
  index_new()
  record(size)
  return n
end
local value, ttl = ARGV[4], ARGV[5]
if op == 'cas' then
  local current = redis.call('GET', key)
  if ARGV[4] == '1' then
    if current ~= ARGV[5] then return 0 end
  elseif current then
    return 0
  end
  value, ttl = ARGV[6], ARGV[7]
end
local size = #key + #value
if over(size) then return redis.error_reply(refused) end
if ttl ~= '' then
  redis.call('SET', key, value, 'PX', ttl)
  redis.call('ZADD', index, now + tonumber(ttl), key)
else
  redis.call('SET', key, value)
  if tracked then redis.call('ZREM', index, key) end
end
index_new()
record(size)
return 1
"#;

/// What the counting scripts share, as Lua functions they begin with: `uncount` gives a
/// key's count back to its usage record and takes it out of the record's expiry set and
/// name index; `reclaim` does that for keys Redis has expired, a few per call.
pub(super) const COUNT_FUNCTIONS: &str = r#"
local function uncount(usage, expiry, names, k)
  local size = redis.call('HGET', usage, 'k:' .. k)
  if size then
    redis.call('HDEL', usage, 'k:' .. k)
    redis.call('HINCRBY', usage, '#keys', -1)
    redis.call('HINCRBY', usage, '#bytes', -tonumber(size))
  end
  redis.call('ZREM', expiry, k)
  redis.call('ZREM', names, k)
end
-- Gives back up to 32 keys whose expiry entry has come due and that Redis has expired.
local function reclaim(usage, expiry, names, now)
  for _, k in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 32)) do
    local left = redis.call('PTTL', k)
    if left == -2 then uncount(usage, expiry, names, k)
    elseif left == -1 then redis.call('ZREM', expiry, k)
    else redis.call('ZADD', expiry, now + left, k) end
  end
end
"#;

/// One page of a usage record's name index: `KEYS` = the index, the usage record, its expiry
/// set; `ARGV` = the lowest name (`[NAME` inclusive or `(NAME` exclusive), the highest
/// (`[PREFIX\xff`), the most names to answer. Answers the live names and, when more may
/// follow, the last name looked at (else ""). A name whose key has expired is left out and
/// given back; at most four rounds of names are looked at, so a run of expired names costs
/// bounded work per call and the cursor still moves past it.
pub(super) const LIST_SCRIPT: &str = r#"
local names, usage, expiry = KEYS[1], KEYS[2], KEYS[3]
local min, want = ARGV[1], tonumber(ARGV[3])
local out, last = {}, ''
for _ = 1, 4 do
  local asked = want - #out
  local batch = redis.call('ZRANGEBYLEX', names, min, ARGV[2], 'LIMIT', 0, asked)
  for _, k in ipairs(batch) do
    if redis.call('EXISTS', k) == 1 then out[#out + 1] = k else uncount(usage, expiry, names, k) end
    last = k
  end
  if #batch < asked then return {out, ''} end
  if #out >= want then break end
  min = '(' .. last
end
return {out, last}
"#;

/// Moves room to a usage record (`KEYS[1]`, with its expiry set and name index): `ARGV` =
/// its quota's keys and bytes, the key and byte room to move (negative: away, cut to what is
/// spare). Keys Redis has expired are given back first, so a shard that is written to no
/// more still frees their room. Answers its keys, bytes, room of keys and bytes after, and
/// what moved.
pub(super) const QUOTA_MOVE: &str = r#"
local usage = KEYS[1]
local t = redis.call('TIME')
reclaim(usage, KEYS[2], KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000))
local got = redis.call('HMGET', usage, '#keys', '#bytes', '#dk', '#db')
local function move(i, field, moved)
  local asked, max = tonumber(ARGV[2 + i]), tonumber(ARGV[i])
  local used = tonumber(got[i] or '0')
  moved = tonumber(moved or '0')
  if asked < 0 then asked = -math.min(-asked, math.max(0, max + moved - used)) end
  if asked ~= 0 then moved = redis.call('HINCRBY', usage, field, asked) end
  return asked, math.max(0, max + moved), used
end
local mk, keys_room, keys = move(1, '#dk', got[3])
local mb, bytes_room, bytes = move(2, '#db', got[4])
return {keys, bytes, keys_room, bytes_room, mk, mb}
"#;

/// The hash operations, as Lua functions the scripts below begin with. A hash keeps the
/// running total of its fields' names and values in its own field `#bytes`, so a write reads
/// and changes a few fields, never the whole hash: it used to sum every field on each write,
/// and a request that wrote 13,889 small fields into one session took ~2 ms of Redis per
/// write by the end (27.9 s of Redis in all, another app on the same Redis down to 0.23x).
pub(super) const HASH_FUNCTIONS: &str = r#"
local function hash_bytes(key)
  local bytes = redis.call('HGET', key, '#bytes')
  if bytes then return tonumber(bytes) end
  -- A hash written before the total was kept: summed once, kept from then on.
  local total, all = 0, redis.call('HGETALL', key)
  for i = 1, #all, 2 do total = total + #all[i] + #all[i + 1] end
  return total
end
-- The hash's total once `field` is `value`, or -1 (over `max_bytes`) or -2 (a new field over
-- `max_fields`).
local function hash_plan(key, field, value, max_bytes, max_fields)
  local exists = redis.call('HEXISTS', key, field) == 1
  local after = hash_bytes(key) + #field + #value
  if exists then after = after - #field - redis.call('HSTRLEN', key, field) end
  if after > max_bytes then return -1 end
  if not exists and redis.call('HLEN', key) - redis.call('HEXISTS', key, '#bytes') >= max_fields then
    return -2
  end
  return after
end
local function hash_apply(key, field, value, after, ttl)
  redis.call('HSET', key, field, value, '#bytes', after)
  redis.call('PEXPIRE', key, ttl)
end
-- Removes `field`: whether it was there, and the hash's total after (false once the hash
-- is gone with its last field).
local function hash_remove(key, field)
  if redis.call('HEXISTS', key, field) == 0 then return 0, false end
  local after = hash_bytes(key) - #field - redis.call('HSTRLEN', key, field)
  redis.call('HDEL', key, field)
  redis.call('HSET', key, '#bytes', after)
  if redis.call('HLEN', key) == 1 then
    redis.call('DEL', key)
    return 1, false
  end
  return 1, after
end
"#;

/// Sets one hash field and the hash's expiry within limits, uncounted: ARGV = field, value,
/// max bytes, max fields, expiry in ms. Answers the hash's new total, or -1 / -2 as
/// `hash_plan` does, having changed nothing.
pub(super) const HASH_SET: &str = r#"
local after = hash_plan(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if after >= 0 then hash_apply(KEYS[1], ARGV[1], ARGV[2], after, ARGV[5]) end
return after
"#;

/// Removes one hash field, uncounted: ARGV = field. Answers 1 if it was there.
pub(super) const HASH_DELETE: &str = r#"
local removed = hash_remove(KEYS[1], ARGV[1])
return removed
"#;

/// RENAME, answering 0 instead of failing when the source is missing.
pub(super) const RENAME_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"#;
