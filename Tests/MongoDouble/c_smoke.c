/*
 * Smoke test: the real libmongoc client against the MongoDB test double.
 *
 *   cc -o c_smoke c_smoke.c $(pkg-config --cflags --libs libmongoc-1.0)
 *   ./c_smoke 'mongodb://127.0.0.1:PORT/?replicaSet=rs0'
 *
 * Uses a client pool (as StreamBroker does), runs ping, creates a unique
 * index, inserts (and gets E11000 for a duplicate), finds with a small batch
 * size (so getMore runs), runs findAndModify with an $inc upsert, opens a change
 * stream with mongoc_collection_watch, receives an insert made by another pooled
 * client after it was opened, and resumes with resumeAfter.  Then the paths
 * StreamBroker relies on when things go wrong: a change stream resumes by itself
 * after failCommand closes its connection, a retryable insert is retried once,
 * and a too-old resume token fails with ChangeStreamHistoryLost (286).
 * Prints "c_smoke: OK" and exits 0 on success; exits 1 with a reason otherwise.
 */

#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                  \
   do {                                                            \
      fprintf (stderr, "c_smoke FAIL (line %d): ", __LINE__);      \
      fprintf (stderr, __VA_ARGS__);                               \
      fprintf (stderr, "\n");                                      \
      exit (1);                                                    \
   } while (0)

#define CHECK_OK(ok, error)                                                   \
   do {                                                                      \
      if (!(ok)) {                                                           \
         FAIL ("domain %u code %u: %s", (error).domain, (error).code,         \
               (error).message);                                             \
      }                                                                      \
   } while (0)

static int64_t
get_int64 (const bson_t *doc, const char *dotted)
{
   bson_iter_t it, child;
   if (!bson_iter_init (&it, doc) ||
       !bson_iter_find_descendant (&it, dotted, &child)) {
      char *json = bson_as_canonical_extended_json (doc, NULL);
      fprintf (stderr, "missing %s in %s\n", dotted, json);
      bson_free (json);
      exit (1);
   }
   return bson_iter_as_int64 (&child);
}

static const char *
get_utf8 (const bson_t *doc, const char *dotted)
{
   bson_iter_t it, child;
   if (!bson_iter_init (&it, doc) ||
       !bson_iter_find_descendant (&it, dotted, &child) ||
       !BSON_ITER_HOLDS_UTF8 (&child)) {
      return NULL;
   }
   return bson_iter_utf8 (&child, NULL);
}

static void
insert_event (mongoc_collection_t *coll, const char *topic, int64_t offset)
{
   bson_error_t error;
   bson_t *doc = BCON_NEW ("topic",
                           BCON_UTF8 (topic),
                           "offset",
                           BCON_INT64 (offset),
                           "payload",
                           "{",
                           "n",
                           BCON_INT64 (offset),
                           "}");
   bool ok = mongoc_collection_insert_one (coll, doc, NULL, NULL, &error);
   CHECK_OK (ok, error);
   bson_destroy (doc);
}

/* configureFailPoint failCommand {times: 1} for one command with a boolean option. */
static void
fail_point (mongoc_client_t *client, const char *command, const char *option)
{
   bson_error_t error;
   bson_t *cmd = BCON_NEW ("configureFailPoint",
                           BCON_UTF8 ("failCommand"),
                           "mode",
                           "{",
                           "times",
                           BCON_INT32 (1),
                           "}",
                           "data",
                           "{",
                           "failCommands",
                           "[",
                           BCON_UTF8 (command),
                           "]",
                           option,
                           BCON_BOOL (true),
                           "}");
   bool ok = mongoc_client_command_simple (client, "admin", cmd, NULL, NULL, &error);
   CHECK_OK (ok, error);
   bson_destroy (cmd);
}

/* Waits for the next event from a change stream (each call to
 * mongoc_change_stream_next is one awaitData getMore); returns a copy. */
static bson_t *
next_event (mongoc_change_stream_t *stream, int max_tries)
{
   const bson_t *event;
   const bson_t *err_doc;
   bson_error_t error;
   for (int i = 0; i < max_tries; i++) {
      if (mongoc_change_stream_next (stream, &event)) {
         return bson_copy (event);
      }
      if (mongoc_change_stream_error_document (stream, &error, &err_doc)) {
         FAIL ("change stream error %u: %s", error.code, error.message);
      }
   }
   return NULL;
}

int
main (int argc, char **argv)
{
   const char *uri_str =
      argc > 1 ? argv[1] : "mongodb://127.0.0.1:27017/?replicaSet=rs0";
   bson_error_t error;
   bson_t reply;
   bool ok;

   mongoc_init ();
   mongoc_uri_t *uri = mongoc_uri_new_with_error (uri_str, &error);
   if (!uri) {
      FAIL ("bad URI %s: %s", uri_str, error.message);
   }
   mongoc_client_pool_t *pool = mongoc_client_pool_new (uri);
   mongoc_client_pool_set_error_api (pool, MONGOC_ERROR_API_VERSION_2);
   mongoc_client_pool_set_appname (pool, "c_smoke");
   mongoc_client_t *client = mongoc_client_pool_pop (pool);

   /* ping */
   bson_t *ping = BCON_NEW ("ping", BCON_INT32 (1));
   ok = mongoc_client_command_simple (client, "admin", ping, NULL, &reply, &error);
   CHECK_OK (ok, error);
   bson_destroy (&reply);
   bson_destroy (ping);

   /* A server description: the pool must see a replica-set primary. */
   mongoc_server_description_t *sd =
      mongoc_client_select_server (client, true, NULL, &error);
   if (!sd) {
      FAIL ("no writable server: %s", error.message);
   }
   if (strcmp (mongoc_server_description_type (sd), "RSPrimary") != 0) {
      FAIL ("server type is %s, not RSPrimary", mongoc_server_description_type (sd));
   }
   mongoc_server_description_destroy (sd);

   mongoc_database_t *db = mongoc_client_get_database (client, "c_smoke");
   mongoc_database_drop (db, NULL); /* may not exist yet */

   /* createIndexes: unique {topic: 1, offset: 1} */
   bson_t *create_indexes = BCON_NEW ("createIndexes",
                                      BCON_UTF8 ("events"),
                                      "indexes",
                                      "[",
                                      "{",
                                      "key",
                                      "{",
                                      "topic",
                                      BCON_INT32 (1),
                                      "offset",
                                      BCON_INT32 (1),
                                      "}",
                                      "name",
                                      BCON_UTF8 ("topic_1_offset_1"),
                                      "unique",
                                      BCON_BOOL (true),
                                      "}",
                                      "]");
   ok = mongoc_database_write_command_with_opts (
      db, create_indexes, NULL, &reply, &error);
   CHECK_OK (ok, error);
   bson_destroy (&reply);
   bson_destroy (create_indexes);

   mongoc_collection_t *events = mongoc_client_get_collection (client, "c_smoke", "events");

   /* insert, then a duplicate → E11000 */
   insert_event (events, "orders", 1);
   bson_t *dup = BCON_NEW ("topic", BCON_UTF8 ("orders"), "offset", BCON_INT64 (1));
   ok = mongoc_collection_insert_one (events, dup, NULL, &reply, &error);
   if (ok || error.code != 11000 || !strstr (error.message, "E11000 duplicate key error")) {
      FAIL ("expected E11000, got ok=%d code=%u: %s", ok, error.code, error.message);
   }
   bson_destroy (&reply);
   bson_destroy (dup);

   /* insert_many: a batch goes as an OP_MSG kind-1 document sequence */
   bson_t *many[5];
   for (int i = 0; i < 5; i++) {
      many[i] = BCON_NEW ("topic", BCON_UTF8 ("bulk"), "offset", BCON_INT64 (i + 1));
   }
   ok = mongoc_collection_insert_many (
      events, (const bson_t **) many, 5, NULL, &reply, &error);
   CHECK_OK (ok, error);
   if (get_int64 (&reply, "insertedCount") != 5) {
      FAIL ("insert_many inserted %d", (int) get_int64 (&reply, "insertedCount"));
   }
   bson_destroy (&reply);
   for (int i = 0; i < 5; i++) {
      bson_destroy (many[i]);
   }

   /* find with batchSize 2: firstBatch + getMores, sorted by offset */
   bson_t *filter = BCON_NEW ("topic", BCON_UTF8 ("bulk"), "offset", "{", "$gte", BCON_INT32 (2), "}");
   bson_t *find_opts = BCON_NEW (
      "sort", "{", "offset", BCON_INT32 (1), "}", "batchSize", BCON_INT32 (2));
   mongoc_cursor_t *cursor =
      mongoc_collection_find_with_opts (events, filter, find_opts, NULL);
   const bson_t *doc;
   int64_t expect = 2;
   while (mongoc_cursor_next (cursor, &doc)) {
      if (get_int64 (doc, "offset") != expect) {
         FAIL ("find returned offset %d, expected %d",
               (int) get_int64 (doc, "offset"), (int) expect);
      }
      expect++;
   }
   if (mongoc_cursor_error (cursor, &error)) {
      FAIL ("cursor error: %s", error.message);
   }
   if (expect != 6) {
      FAIL ("find returned %d documents, expected 4", (int) (expect - 2));
   }
   mongoc_cursor_destroy (cursor);
   bson_destroy (filter);
   bson_destroy (find_opts);

   /* findAndModify: $inc upsert, returning the new document */
   mongoc_collection_t *counters =
      mongoc_client_get_collection (client, "c_smoke", "counters");
   for (int round = 1; round <= 2; round++) {
      mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new ();
      bson_t *update = BCON_NEW ("$inc", "{", "nextOffset", BCON_INT64 (3), "}");
      mongoc_find_and_modify_opts_set_update (fam, update);
      mongoc_find_and_modify_opts_set_flags (
         fam, MONGOC_FIND_AND_MODIFY_UPSERT | MONGOC_FIND_AND_MODIFY_RETURN_NEW);
      bson_t *query = BCON_NEW ("_id", BCON_UTF8 ("orders:0"));
      ok = mongoc_collection_find_and_modify_with_opts (
         counters, query, fam, &reply, &error);
      CHECK_OK (ok, error);
      if (get_int64 (&reply, "value.nextOffset") != 3 * round) {
         FAIL ("findAndModify round %d returned nextOffset %d", round,
               (int) get_int64 (&reply, "value.nextOffset"));
      }
      bson_iter_t it, child;
      bson_iter_init (&it, &reply);
      if (!bson_iter_find_descendant (&it, "value.nextOffset", &child) ||
          !BSON_ITER_HOLDS_INT64 (&child)) {
         FAIL ("nextOffset is not an int64 after $inc with an int64");
      }
      bson_destroy (&reply);
      bson_destroy (query);
      bson_destroy (update);
      mongoc_find_and_modify_opts_destroy (fam);
   }

   /* Change stream on events, filtered like the broker's per-topic tails. */
   bson_t *pipeline = BCON_NEW ("pipeline",
                                "[",
                                "{",
                                "$match",
                                "{",
                                "operationType",
                                BCON_UTF8 ("insert"),
                                "fullDocument.topic",
                                BCON_UTF8 ("orders"),
                                "}",
                                "}",
                                "]");
   bson_t *watch_opts = BCON_NEW ("maxAwaitTimeMS", BCON_INT64 (300));
   mongoc_change_stream_t *stream =
      mongoc_collection_watch (events, pipeline, watch_opts);
   const bson_t *err_doc;
   if (mongoc_change_stream_error_document (stream, &error, &err_doc)) {
      FAIL ("watch failed: %s", error.message);
   }
   /* Nothing yet: next() returns false without an error after maxAwaitTimeMS. */
   const bson_t *none;
   if (mongoc_change_stream_next (stream, &none)) {
      FAIL ("unexpected change event before any insert");
   }
   if (mongoc_change_stream_error_document (stream, &error, &err_doc)) {
      FAIL ("empty getMore failed: %s", error.message);
   }
   if (!mongoc_change_stream_get_resume_token (stream)) {
      FAIL ("no postBatchResumeToken after an empty getMore");
   }

   /* Another pooled client inserts (another connection). */
   mongoc_client_t *client2 = mongoc_client_pool_pop (pool);
   mongoc_collection_t *events2 =
      mongoc_client_get_collection (client2, "c_smoke", "events");
   insert_event (events2, "other", 1);
   insert_event (events2, "orders", 2);

   bson_t *event = next_event (stream, 20);
   if (!event) {
      FAIL ("no change event for the insert");
   }
   if (get_int64 (event, "fullDocument.offset") != 2 ||
       strcmp (get_utf8 (event, "operationType"), "insert") != 0 ||
       strcmp (get_utf8 (event, "ns.coll"), "events") != 0) {
      char *json = bson_as_relaxed_extended_json (event, NULL);
      FAIL ("unexpected event %s", json);
   }
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   if (!bson_iter_init_find (&it, event, "_id") || !BSON_ITER_HOLDS_DOCUMENT (&it)) {
      FAIL ("event has no _id resume token");
   }
   bson_iter_document (&it, &len, &data);
   bson_t token;
   bson_init_static (&token, data, len);
   bson_t *token_copy = bson_copy (&token);

   insert_event (events2, "orders", 3);
   insert_event (events2, "orders", 4);
   bson_t *e3 = next_event (stream, 20);
   if (!e3 || get_int64 (e3, "fullDocument.offset") != 3) {
      FAIL ("live stream did not deliver offset 3");
   }
   bson_destroy (e3);
   mongoc_change_stream_destroy (stream);

   /* Resume after the token of offset 2: offsets 3 and 4 come again. */
   bson_t resume_opts = BSON_INITIALIZER;
   BSON_APPEND_DOCUMENT (&resume_opts, "resumeAfter", token_copy);
   BSON_APPEND_INT64 (&resume_opts, "maxAwaitTimeMS", 300);
   mongoc_change_stream_t *resumed =
      mongoc_collection_watch (events, pipeline, &resume_opts);
   for (int64_t want = 3; want <= 4; want++) {
      bson_t *e = next_event (resumed, 20);
      if (!e || get_int64 (e, "fullDocument.offset") != want) {
         FAIL ("resumed stream did not deliver offset %d", (int) want);
      }
      bson_destroy (e);
   }

   /* failCommand closeConnection on the next getMore: libmongoc sees a network
    * error and resumes the stream by itself from its cached resume token. */
   fail_point (client, "getMore", "closeConnection");
   insert_event (events2, "orders", 5);
   bson_t *e5 = next_event (resumed, 40);
   if (!e5 || get_int64 (e5, "fullDocument.offset") != 5) {
      FAIL ("stream did not resume after the connection was closed");
   }
   bson_destroy (e5);
   mongoc_change_stream_destroy (resumed);
   bson_destroy (&resume_opts);

   /* A retryable write survives a closed connection: retried exactly once. */
   fail_point (client, "insert", "closeConnection");
   insert_event (events, "retried", 1);
   bson_t *count_filter = BCON_NEW ("topic", BCON_UTF8 ("retried"));
   int64_t n = mongoc_collection_count_documents (
      events, count_filter, NULL, NULL, NULL, &error);
   if (n != 1) {
      FAIL ("retried insert stored %d documents: %s", (int) n, error.message);
   }
   bson_destroy (count_filter);

   /* A resume token older than the retained history: error 286. */
   bson_t *lost_opts = BCON_NEW (
      "resumeAfter", "{", "_data", BCON_UTF8 ("82000000010000000100"), "}");
   mongoc_change_stream_t *lost = mongoc_collection_watch (events, pipeline, lost_opts);
   const bson_t *lost_event;
   if (mongoc_change_stream_next (lost, &lost_event)) {
      FAIL ("a stream from a lost resume token returned an event");
   }
   if (!mongoc_change_stream_error_document (lost, &error, &err_doc) ||
       error.code != 286) {
      FAIL ("expected ChangeStreamHistoryLost (286), got %u: %s", error.code,
            error.message);
   }
   mongoc_change_stream_destroy (lost);
   bson_destroy (lost_opts);

   bson_destroy (token_copy);
   bson_destroy (event);
   bson_destroy (pipeline);
   bson_destroy (watch_opts);
   mongoc_collection_destroy (events2);
   mongoc_client_pool_push (pool, client2);
   mongoc_collection_destroy (counters);
   mongoc_collection_destroy (events);
   mongoc_database_destroy (db);
   mongoc_client_pool_push (pool, client);
   mongoc_client_pool_destroy (pool);
   mongoc_uri_destroy (uri);
   mongoc_cleanup ();
   printf ("c_smoke: OK\n");
   return 0;
}
