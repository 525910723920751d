-- Selectors are driven by one equality label: its index entries, for one key
-- and value, are in device id order, so a page of a selector reads only that
-- label's devices from the cursor on, and a rollout's targets are read
-- without visiting the rest of the fleet. Supersedes device_labels_kv.
-- Keep in step with ../sqlite/0012_label_index.sql.
CREATE INDEX device_labels_kvd ON device_labels (key, value, device_id);
DROP INDEX device_labels_kv;
