-- pandoc filter for cerssd.toml(5): a man page has no room for docs/config.md's four-column
-- key tables, so each table becomes a list: the first column is the term, the middle
-- columns ("type", "default") a line under it, the last column the text.
local function inlines(cell)
  local out = pandoc.List()
  for _, block in ipairs(cell.contents) do
    if block.content then out:extend(block.content) end
  end
  return out
end

function Table(tbl)
  local heads = {}
  if #tbl.head.rows > 0 then
    for i, cell in ipairs(tbl.head.rows[1].cells) do
      heads[i] = pandoc.utils.stringify(cell.contents)
    end
  end
  local items = pandoc.List()
  for _, body in ipairs(tbl.bodies) do
    for _, row in ipairs(body.body) do
      local cells = row.cells
      local term = inlines(cells[1])
      local facts = pandoc.List()
      for i = 2, #cells - 1 do
        if #facts > 0 then facts:insert(pandoc.Str(";")); facts:insert(pandoc.Space()) end
        facts:insert(pandoc.Emph({pandoc.Str((heads[i] or "") .. ":")}))
        facts:insert(pandoc.Space())
        facts:extend(inlines(cells[i]))
      end
      local def = pandoc.List()
      if #facts > 0 then def:insert(pandoc.Para(facts)) end
      if #cells > 1 then def:extend(cells[#cells].contents) end
      items:insert({term, {def}})
    end
  end
  return pandoc.DefinitionList(items)
end
