"""The Lua scripts behind every multi-step update of the store; Redis runs each one atomically.

Each script names the keys it touches in KEYS (built by `bot.state.keys`), never builds one. Request ids are
16-digit zero-padded numbers, so that sorted-set members with equal scores fall in arrival order.
"""

# KEYS: normal, priority, items, viewers, logins, seq, round, served, blocked
# ARGV: viewer token, login, lane ("normal" | "priority"), max per viewer, max length, request JSON
ENQUEUE = """
local normal, priority, items, viewers, logins, seq, round, served, blocked = unpack(KEYS)
local viewer, login, lane = ARGV[1], ARGV[2], ARGV[3]
if redis.call('SISMEMBER', blocked, login) == 1 then return {'blocked', '0'} end
local total = redis.call('ZCARD', normal) + redis.call('ZCARD', priority)
if total >= tonumber(ARGV[5]) then return {'full', tostring(total)} end
local mine, last = 0, nil
local owners = redis.call('HGETALL', viewers)
for i = 1, #owners, 2 do
  if owners[i + 1] == viewer then
    mine = mine + 1
    local r = redis.call('ZSCORE', normal, owners[i])
    if r and (last == nil or tonumber(r) > last) then last = tonumber(r) end
  end
end
if lane == 'normal' and mine >= tonumber(ARGV[4]) then return {'viewer_cap', tostring(mine)} end
local n = redis.call('INCR', seq)
local id = string.format('%016d', n)
local position
if lane == 'priority' then
  redis.call('ZADD', priority, n, id)
  position = redis.call('ZRANK', priority, id) + 1
else
  -- Round-robin as rounds: a viewer's next request goes one round after their latest queued or played one,
  -- and never before the round now playing; requests of one round play in arrival order.
  local r = tonumber(redis.call('GET', round) or '0')
  local s = redis.call('HGET', served, viewer)
  if s then r = math.max(r, tonumber(s) + 1) end
  if last then r = math.max(r, last + 1) end
  redis.call('ZADD', normal, r, id)
  position = redis.call('ZCARD', priority) + redis.call('ZRANK', normal, id) + 1
end
redis.call('HSET', items, id, ARGV[6])
redis.call('HSET', viewers, id, viewer)
redis.call('HSET', logins, id, login)
return {'ok', id, tostring(position)}
"""

# KEYS: normal, priority, items, viewers, logins, round, served, playing
# ARGV: now
POP_NEXT = """
local normal, priority, items, viewers, logins, round, served, playing = unpack(KEYS)
local lane, popped = 'priority', redis.call('ZPOPMIN', priority)
if #popped == 0 then lane, popped = 'normal', redis.call('ZPOPMIN', normal) end
if #popped == 0 then return false end
local id, score = popped[1], tonumber(popped[2])
local body, viewer = redis.call('HGET', items, id), redis.call('HGET', viewers, id)
redis.call('HDEL', items, id)
redis.call('HDEL', viewers, id)
redis.call('HDEL', logins, id)
if lane == 'normal' then
  if score > tonumber(redis.call('GET', round) or '0') then
    redis.call('SET', round, popped[2])
    -- Who was served in an earlier round no longer holds anyone back; forgetting them keeps this hash small.
    local seen = redis.call('HGETALL', served)
    for i = 1, #seen, 2 do
      if tonumber(seen[i + 1]) < score then redis.call('HDEL', served, seen[i]) end
    end
  end
  redis.call('HSET', served, viewer, popped[2])
end
redis.call('DEL', playing)
redis.call('HSET', playing, 'request_id', id, 'request', body, 'popped_at', ARGV[1])
return {id, body}
"""

# KEYS: normal, priority, items, viewers, logins
# ARGV: viewer token
CANCEL_LATEST = """
local normal, priority, items, viewers, logins = unpack(KEYS)
local owners, latest = redis.call('HGETALL', viewers), nil
for i = 1, #owners, 2 do
  if owners[i + 1] == ARGV[1] and (latest == nil or owners[i] > latest) then latest = owners[i] end
end
if latest == nil then return false end
local body = redis.call('HGET', items, latest)
redis.call('ZREM', normal, latest)
redis.call('ZREM', priority, latest)
redis.call('HDEL', items, latest)
redis.call('HDEL', viewers, latest)
redis.call('HDEL', logins, latest)
return {latest, body}
"""

# KEYS: normal, priority, items, viewers, logins, blocked
# ARGV: login, "1" to block the login as well
REMOVE_LOGIN = """
local normal, priority, items, viewers, logins, blocked = unpack(KEYS)
if ARGV[2] == '1' then redis.call('SADD', blocked, ARGV[1]) end
local all, removed = redis.call('HGETALL', logins), 0
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then
    local id = all[i]
    redis.call('ZREM', normal, id)
    redis.call('ZREM', priority, id)
    redis.call('HDEL', items, id)
    redis.call('HDEL', viewers, id)
    redis.call('HDEL', logins, id)
    removed = removed + 1
  end
end
return removed
"""

# KEYS: votes, played, board_stream, board_week, board_all
# ARGV: viewer token, seed member
VOTE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 'not_played' end
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 'already_voted' end
for i = 3, 5 do redis.call('ZINCRBY', KEYS[i], 1, ARGV[2]) end
return 'counted'
"""

# KEYS: piece
# ARGV: identity, recipe JSON, packed tokens, encoding, token count, token checksum, steers JSON
SAVE_PIECE = """
local have = redis.call('HGET', KEYS[1], 'identity')
if not have then
  redis.call('HSET', KEYS[1], 'identity', ARGV[1], 'recipe', ARGV[2], 'tokens', ARGV[3], 'encoding', ARGV[4],
    'count', ARGV[5], 'tokens_sha', ARGV[6], 'steers', ARGV[7])
  return 'saved'
end
if have ~= ARGV[1] then return 'conflict' end
if ARGV[5] == '0' then return 'same' end
if redis.call('HGET', KEYS[1], 'count') == '0' then
  redis.call('HSET', KEYS[1], 'tokens', ARGV[3], 'encoding', ARGV[4], 'count', ARGV[5], 'tokens_sha', ARGV[6],
    'steers', ARGV[7])
  return 'saved'
end
if redis.call('HGET', KEYS[1], 'tokens_sha') == ARGV[6] then return 'same' end
return 'conflict'
"""

# KEYS: playing, played
# ARGV: seed, now
START_PLAYING = """
-- A record that already has a seed belongs to a piece that never finished; this one replaces it whole.
if redis.call('HEXISTS', KEYS[1], 'seed') == 1 then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'seed', ARGV[1], 'started_at', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'started_at', ARGV[2])
return 1
"""

# KEYS: playing, played
# ARGV: seed, now
FINISH_PLAYING = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'ended_at', ARGV[2])
if redis.call('HGET', KEYS[1], 'seed') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
