-- Argo CD health of a vlmtrain.dev TrainingShape, from its Ready condition.
--   Healthy      Ready=True (the operator accepted the shape)
--   Degraded     Ready=False (InvalidSpec: the message names the field)
--   Progressing  no status yet, or a spec change not yet seen by the operator
local hs = {}
local generation = obj.metadata.generation
if obj.status ~= nil and obj.status.conditions ~= nil then
  local observed = obj.status.observedGeneration
  if generation == nil or observed == nil or observed >= generation then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == "Ready" and (c.status == "True" or c.status == "False") then
        if c.status == "True" then
          hs.status = "Healthy"
        else
          hs.status = "Degraded"
        end
        hs.message = c.reason
        if c.message ~= nil and c.message ~= "" then
          hs.message = c.reason .. ": " .. c.message
        end
        return hs
      end
    end
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the operator to check the shape"
return hs
