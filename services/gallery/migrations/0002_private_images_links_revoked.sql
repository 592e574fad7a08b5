-- Going private now ends an image's share links for good (revoked_at is set in the same transaction
-- as the visibility change). Links of images that are private today were only suspended under the
-- old rule and would come back if the image were shared again or made unlisted: end them now.
UPDATE share_links
   SET revoked_at = now()
 WHERE revoked_at IS NULL
   AND image_id IN (SELECT id FROM images WHERE visibility = 'private');
