"""The Lua of the store: each script runs atomically in Redis, on the keys of one store (one
cluster slot). Their callers are in bridge.store."""

from __future__ import annotations

from bridge.jobs import RANK, STATUSES

# Compare-and-set of a page of jobs' states (all of one source); appends an event to the outbox
# for each status change. One call per page: all its keys share the store's slot.
OBSERVE = """
local jobs_key = KEYS[1]
local open_key = KEYS[2]
local events_key = KEYS[3]
local meta_key = KEYS[4]
local lease_key = KEYS[5]            -- this source's poll lease (bridge.leases)
local marker = ARGV[1]               -- meta field that must exist, "" for none
local fence = ARGV[2]                -- the lease value the writer holds, "" for none
local observed_at = ARGV[3]
local store = ARGV[4]
local source = ARGV[5]
local jobs = ARGV[6]
-- The jobs: each "\\30" and nine fields separated by "\\31": id, status, version (updated_at
-- in microseconds, "0" when unset), silent ("1": record a job never seen before, no event),
-- open score (stall reference in ms of an open job, "" once finished), finished minute (a
-- finished job's last activity, "" while open), then what only an event needs: event id,
-- extra json, job json. One argument rather than nine per job (a client packs each argument
-- at a cost), read with string.match only as far as needed. No field holds either control
-- character (JSON escapes them; job ids with them are refused).
local HEAD = '^\\30' .. string.rep('([^\\31]*)\\31', 6) .. '()'  -- 6 fields, where the rest is
local TAIL = '^([^\\31]*)\\31([^\\31]*)\\31([^\\30]*)'

-- A writer whose lease has passed to another process (or expired) writes nothing.
if fence ~= '' and redis.call('GET', lease_key) ~= fence then
  return {'fenced'}
end
-- A Redis that lost its data (restart without persistence, FLUSHDB) has no marker: write
-- nothing, so that the poller notices and recovers instead of recording changes silently.
if marker ~= '' and redis.call('HEXISTS', meta_key, marker) == 0 then
  return {'lost'}
end

local rank = RANKS                   -- bridge.jobs.RANK: the lifecycle order
local prefix = source .. ':'
local out = {}
local new_jobs = 0
local emitted = 0

-- A finished job's record needs no version (nothing it says later changes it) but carries
-- the minute it finished, for retention: 8 bytes per record less in Redis's allocator.
local function state(status, version_text, seq, stalled, finished_minute)
  if finished_minute ~= '' then
    return status .. '||' .. seq .. '|' .. finished_minute
  end
  return status .. '|' .. version_text .. '|' .. seq .. '|' .. stalled
end

local function observe(id, status, version_text, silent, open_score, finished_minute, tail)
  local member = prefix .. id
  local stored = redis.call('HGET', jobs_key, member)
  local prev_status = ''
  local seq = 0
  if stored then
    local s, v, q, t = string.match(stored, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    seq = tonumber(q)
    if v == '' then
      return s == status and 'unchanged' or 'stale', seq, s
    end
    local version = tonumber(version_text)
    local stored_version = tonumber(v)
    if version < stored_version then
      return 'stale', seq, s
    end
    if s == status then
      if version > stored_version then
        redis.call('HSET', jobs_key, member, state(status, version_text, seq, t, finished_minute))
      end
      return 'unchanged', seq, s
    end
    -- Jobs never move backwards. updated_at does not move when a job completes, so a late
    -- read of an earlier status carries the same version: refuse it by the lifecycle order.
    local old_rank = rank[s] or 0
    local new_rank = rank[status] or 0
    if new_rank < old_rank or (new_rank == old_rank and version == stored_version) then
      return 'stale', seq, s
    end
    prev_status = s
  else
    new_jobs = new_jobs + 1
    if silent == '1' then
      redis.call('HSET', jobs_key, member, state(status, version_text, 0, '0', finished_minute))
      if open_score ~= '' then
        redis.call('ZADD', open_key, open_score, member)
      end
      return 'recorded', 0, ''
    end
  end
  seq = seq + 1
  redis.call('HSET', jobs_key, member, state(status, version_text, seq, '0', finished_minute))
  if open_score ~= '' then
    redis.call('ZADD', open_key, open_score, member)
  else
    redis.call('ZREM', open_key, member)
  end
  local event_id, extra_json, job_json = string.match(jobs, TAIL, tail)
  redis.call('XADD', events_key, '*',
    'id', event_id, 'store', store, 'source', source, 'status', status,
    'prev', prev_status, 'seq', seq, 'time', observed_at, 'job', job_json, 'extra', extra_json)
  emitted = emitted + 1
  return 'emitted', seq, prev_status
end

local at = 1
while at <= #jobs do
  local id, status, version, silent, score, minute, tail = string.match(jobs, HEAD, at)
  local result, seq, prev = observe(id, status, version, silent, score, minute, tail)
  at = string.find(jobs, '\\30', tail, true) or #jobs + 1
  out[#out + 1] = result
  out[#out + 1] = seq
  out[#out + 1] = prev
end
if new_jobs > 0 then
  redis.call('HINCRBY', meta_key, 'count:' .. source, new_jobs)
end
return out
""".replace("RANKS", "{" + ", ".join(f"{status} = {RANK[status]}" for status in STATUSES) + "}")

# Finished jobs' records past retention: each (member, value read, replacement) is applied
# only if the record still holds that value; an empty replacement deletes it.
FORGET = """
local jobs_key = KEYS[1]
local forgotten = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', jobs_key, ARGV[i]) == ARGV[i + 1] then
    if ARGV[i + 2] == '' then
      redis.call('HDEL', jobs_key, ARGV[i])
      forgotten = forgotten + 1
    else
      redis.call('HSET', jobs_key, ARGV[i], ARGV[i + 2])
    end
  end
end
return forgotten
"""

# One `stalled` event for a job still in `expected` status; the flag resets on a status change.
STALL = """
local jobs_key = KEYS[1]
local events_key = KEYS[2]
local lease_key = KEYS[3]
local member = ARGV[1]
local expected = ARGV[2]
local event_id = ARGV[3]
local observed_at = ARGV[4]
local store = ARGV[5]
local source = ARGV[6]
local job_json = ARGV[7]
local fence = ARGV[8]               -- the lease value the writer holds, "" for none

if fence ~= '' and redis.call('GET', lease_key) ~= fence then
  return {'fenced', 0}
end
local stored = redis.call('HGET', jobs_key, member)
if not stored then
  return {'unknown', 0}
end
local s, v, q, t = string.match(stored, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
if s ~= expected or t == '1' then
  return {'skipped', tonumber(q)}
end
local seq = tonumber(q) + 1
redis.call('HSET', jobs_key, member, s .. '|' .. v .. '|' .. seq .. '|1')
redis.call('XADD', events_key, '*',
  'id', event_id, 'store', store, 'source', source, 'status', 'stalled',
  'prev', s, 'seq', seq, 'time', observed_at, 'job', job_json, 'extra', '{}')
return {'emitted', seq}
"""
