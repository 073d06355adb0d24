-- Argo CD health of a vlmtrain.dev Checkpoint, from status.conditions (set by the operator).
--   Degraded     Verified=False (VerificationFailed) or Promoted=False (PromotionFailed)
--   Healthy      Promoted=True, or Verified=True when no promotion is requested
--   Progressing  no status yet, a spec change not yet seen, verifying, promoting
local function find(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to verify the checkpoint"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = obj.status.conditions

local verified = find(conditions, "Verified")
if verified ~= nil and verified.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(verified)
  return hs
end
local promoted = find(conditions, "Promoted")
if promoted ~= nil and promoted.status == "False" and promoted.reason == "PromotionFailed" then
  hs.status = "Degraded"
  hs.message = describe(promoted)
  return hs
end
if promoted ~= nil and promoted.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(promoted)
  return hs
end
if verified == nil or verified.status ~= "True" then
  hs.status = "Progressing"
  if verified ~= nil then
    hs.message = describe(verified)
  else
    hs.message = "Waiting for the operator to verify the checkpoint"
  end
  return hs
end
if obj.spec ~= nil and obj.spec.promote ~= nil then
  hs.status = "Progressing"
  if promoted ~= nil and promoted.reason ~= "NotRequested" then
    hs.message = describe(promoted)
  else
    hs.message = "Waiting for the promotion to " .. obj.spec.promote.outputModel .. " to start"
  end
  return hs
end
hs.status = "Healthy"
hs.message = describe(verified)
return hs
